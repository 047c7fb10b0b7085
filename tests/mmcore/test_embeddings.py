"""Embedding every case for the index: the best note by preference, resumable by what was embedded (a changed note
is embedded again, an unchanged one is not), a deleted note leaves the text collection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmcore.cases import DX_CLASSES, Case, CaseStore
from mmcore.config import load_config
from mmcore.embeddings import Eta, best_note, clock, embed_cases, time_left, with_counts
from mmcore.model import build_model


def test_best_note_follows_the_preference_and_skips_blank_notes():
    case = Case(case_id="a", source="s", dx="nv", notes={"P1": "report", "clinical": "  ", "M": "template"})
    assert best_note(case, ("clinical", "P1", "M")) == ("P1", "report")
    assert best_note(case, ("P3",)) is None


@pytest.fixture
def model(synth_home):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(load_config("tiny", env={}).model), DX_CLASSES).eval()


def test_embedding_resumes_and_follows_changed_notes(synth_home, model):
    with CaseStore(synth_home) as store:
        first = embed_cases(model, store, "v", ("clinical", "P1"))
        assert first.embedded == {"image": 84, "text": 84} and first.notes_by_strategy == {"clinical": 84}
        ids, before = store.get_embeddings("v", "text")
        again = embed_cases(model, store, "v", ("clinical", "P1"))
        assert again.embedded == {"image": 0, "text": 0}  # nothing changed: nothing computed
        changed, gone = ids[0], ids[1]
        store.set_notes([(changed, "clinical", "Itchy new lesion on the back, 6 mm, dark brown.")])
        for strategy in ("M", "P1", "P2", "P3", "clinical"):
            store.delete_notes([gone], strategy)
        third = embed_cases(model, store, "v", ("clinical", "P1"))
        assert third.embedded == {"image": 0, "text": 1} and third.without_note == 1
        ids_after, after = store.get_embeddings("v", "text")
        assert gone not in ids_after and len(ids_after) == 83
        moved = {i for i, a in zip(ids_after, after, strict=True) if not np.allclose(a, before[ids.index(i)])}
        assert moved == {changed}
        forced = embed_cases(model, store, "v", ("clinical", "P1"), force=True)
        assert forced.embedded == {"image": 84, "text": 83}


def test_eta_words_elapsed_and_remaining_time_from_the_rate_so_far():
    import time

    eta = Eta(total=400, started=time.monotonic() - 60)
    assert eta(0) == "1:00 elapsed"
    assert eta(100) == "1:00 elapsed, about 3:00 left"  # 100 in a minute: 300 more in three
    assert eta(400) == "1:00 elapsed"
    assert [clock(s) for s in (0, 7, 65, 3725)] == ["0:00", "0:07", "1:05", "1:02:05"]


def test_embedding_streams_in_chunks_with_an_eta_and_resumes_after_a_crash(synth_home, model, monkeypatch):
    import mmcore.embeddings as embeddings

    monkeypatch.setattr(embeddings, "CHUNK", 20)
    messages, stages = [], []

    def crash_after_two_image_chunks(fraction: float, text: str, **counts) -> None:
        messages.append(text)
        stages.append(counts)
        if len(messages) == 2:
            raise KeyboardInterrupt  # a cancel, or a crash: what was written stays written

    with CaseStore(synth_home) as store:
        with pytest.raises(KeyboardInterrupt):
            embed_cases(model, store, "v", ("clinical",), progress=crash_after_two_image_chunks)
        assert len(store.get_embeddings("v", "image")[0]) == 40
        assert messages[0].startswith("embedding images: 20 of 84 · 0:0") and "elapsed" in messages[0]
        assert stages == [
            {"stage": "embedding images", "done": 20, "total": 84},
            {"stage": "embedding images", "done": 40, "total": 84},
        ]
        messages.clear()
        report = embed_cases(model, store, "v", ("clinical",), progress=lambda f, text, **_: messages.append((f, text)))
        assert report.embedded == {"image": 44, "text": 84}  # the finished chunks are not embedded again
        image_ms, note_ms = embeddings.ITEM_MS["image"], embeddings.ITEM_MS["text"]
        work = 44 * image_ms + 84 * note_ms  # the fraction is of the estimated time: an image costs ~25 notes
        assert [round(f, 3) for f, _ in messages][:3] == [round(n * image_ms / work, 3) for n in (20, 40, 44)]
        assert messages[-1] == (1.0, messages[-1][1]) and messages[-1][1].startswith("embedding notes: 84 of 84")


def test_the_plan_prices_cached_features_apart_from_decoding(synth_home, model, tmp_path):
    """What the progress fraction is apportioned by: a decoded image costs ITEM_MS["image"], features found in the
    cache ITEM_MS["cached"]; embedding with the plan stores exactly what it listed."""
    from mmcore.embeddings import ITEM_MS, plan_embedding

    with CaseStore(synth_home) as store:
        cold = plan_embedding(model, store, "v", ("clinical",), cache_dir=tmp_path)
        assert [len(cold.todo[m]) for m in ("image", "text")] == [84, 84] and not cold.cached
        assert cold.embed_ms == pytest.approx(84 * ITEM_MS["image"] + 84 * ITEM_MS["text"])
        assert cold.index_ms == pytest.approx(168 * ITEM_MS["vector"])
        report = embed_cases(model, store, "v", ("clinical",), cache_dir=tmp_path, plan=cold)
        assert report.embedded == {"image": 84, "text": 84} and len(store.get_embeddings("v", "image")[0]) == 84
        assert plan_embedding(model, store, "v", ("clinical",), cache_dir=tmp_path).embed_ms == 0  # all stored
        warm = plan_embedding(model, store, "v", ("clinical",), cache_dir=tmp_path, force=True)
        assert len(warm.cached) == 168 and warm.embed_ms == pytest.approx(168 * ITEM_MS["cached"])


def test_streamed_vectors_are_the_models_own(synth_home, model):
    """Decoding in threads and chunking change nothing: each stored vector is what the model gives for that case."""
    with CaseStore(synth_home) as store:
        embed_cases(model, store, "v", ("clinical",), batch_size=7, num_workers=3)
        ids, vectors = store.get_embeddings("v", "image")
        _, notes = store.get_embeddings("v", "text")
        transform = model.image_transform(train=False)
        for i in (0, 41, 83):
            case = store.get(ids[i], with_notes=True)
            with torch.inference_mode():
                image = transform(store.load_image(case)).unsqueeze(0)  # (1, 3, S, S)
                tokens = model.tokenize([case.notes["clinical"]])
                expected_image = model.encode_image(image)[0]
                expected_text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])[0]
            assert np.allclose(vectors[i], expected_image.numpy(), atol=1e-5)
            assert np.allclose(notes[i], expected_text.numpy(), atol=1e-5)


def test_time_left_estimates_from_the_rate_so_far_and_not_from_noise():
    assert time_left(60, 0.25) == "1:00 elapsed, about 3:00 left"  # a quarter in a minute: three more
    assert time_left(5, 0.01) == "0:05 elapsed"  # under 2% done: no estimate yet
    assert time_left(5, 0.01, at_least=0.0) == "0:05 elapsed, about 8:15 left"
    assert time_left(600, 1.0) == "10:00 elapsed" and time_left(0, 0.0) == "0:00 elapsed"


def test_only_the_modalities_asked_for_are_embedded(synth_home, model):
    with CaseStore(synth_home) as store:
        notes_only = embed_cases(model, store, "v", ("clinical",), modalities=("text",))
        assert notes_only.embedded == {"image": 0, "text": 84}
        assert len(store.get_embeddings("v", "image")[0]) == 0 and len(store.get_embeddings("v", "text")[0]) == 84
        rest = embed_cases(model, store, "v", ("clinical",))  # the images later; the notes are up to date
        assert rest.embedded == {"image": 84, "text": 0}


def test_a_plain_callback_gets_the_line_and_a_counting_one_the_stage_too():
    got = []

    def plain(fraction, text):  # what callers written before the counts pass (mmcore.register's bar)
        got.append(("plain", fraction, text))

    def counting(fraction, text, *, stage="", done=None, total=None):
        got.append(("counting", stage, done, total))

    for callback in (plain, counting, lambda f, t, **counts: got.append(("any", counts))):
        with_counts(callback)(0.5, "embedding images: 1 of 2", stage="embedding images", done=1, total=2)
    assert got == [
        ("plain", 0.5, "embedding images: 1 of 2"),
        ("counting", "embedding images", 1, 2),
        ("any", {"stage": "embedding images", "done": 1, "total": 2}),
    ]
    assert with_counts(None) is None
