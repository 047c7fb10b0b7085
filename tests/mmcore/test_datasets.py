"""The data side: case selection and skips, per-epoch note choice, balanced sampling and sharding, feature cache."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import torch

from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import load_config
from mmcore.datasets import (
    CaseSet,
    FeatureBatches,
    ImageTextBatches,
    cached_features,
    choose_notes,
    epoch_order,
    image_features,
    load_case_set,
    shard,
    text_features,
)
from mmcore.model import build_model

TINY = load_config("tiny", env={})


def _case_set(n: int, strategies: tuple[str, ...], missing: dict[str, set[int]] | None = None) -> CaseSet:
    missing = missing or {}
    notes = {s: [None if i in missing.get(s, ()) else f"{s} note {i}" for i in range(n)] for s in strategies}
    return CaseSet(
        cases=[None] * n, labels=np.zeros(n, dtype=np.int64), classes=DX_CLASSES, strategies=strategies, notes=notes
    )


def test_note_choice_is_deterministic_mixed_and_only_among_notes_a_case_has():
    cs = _case_set(3000, ("M", "P1", "P2"), missing={"P2": set(range(1000))})
    a, b = choose_notes(cs, seed=0, epoch=3), choose_notes(cs, seed=0, epoch=3)
    assert (a == b).all()
    assert (choose_notes(cs, seed=0, epoch=4) != a).mean() > 0.4  # a new draw every epoch
    assert (a[:1000] != 2).all()  # never a note the case lacks
    shares = np.bincount(a[1000:], minlength=3) / 2000
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.05)
    assert (choose_notes(_case_set(50, ("P1",)), 0, 0) == 0).all()


def test_balanced_order_sees_every_class_equally_often():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    order = np.concatenate([epoch_order(labels, seed=1, epoch=e, balanced=True) for e in range(5)])
    shares = np.bincount(labels[order], minlength=3) / len(order)
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.03)
    assert (epoch_order(labels, 1, 2, True) == epoch_order(labels, 1, 2, True)).all()
    plain = epoch_order(labels, 1, 2, balanced=False)
    assert sorted(plain.tolist()) == list(range(1000))


def test_shards_of_the_ranks_make_up_the_global_batches():
    order = np.arange(100, 150)  # 50 items, global batch 8: 6 whole batches, the last 2 items dropped
    one = shard(order, 8)
    ranks = [shard(order, 8, rank=r, world_size=2) for r in range(2)]
    assert len(one) == 48 and all(len(r) == 24 for r in ranks)
    for k in range(6):  # global batch k = rank 0's batch k + rank 1's batch k
        together = sorted(ranks[0][4 * k : 4 * k + 4].tolist() + ranks[1][4 * k : 4 * k + 4].tolist())
        assert together == sorted(one[8 * k : 8 * k + 8].tolist())


def test_case_selection_skips_unknown_classes_and_cases_without_notes(synth_home):
    with CaseStore(synth_home) as store:
        train = store.cases(split="train")
        store.upsert([dataclasses.replace(train[0], dx="scc", malignancy="")])
        store.delete_notes([train[1].case_id], "P3")
        cs = load_case_set(store, "train", DX_CLASSES, ("P3",))
        mixed = load_case_set(store, "train", DX_CLASSES, ("P3", "P1"))
        clinical = load_case_set(store, "train", DX_CLASSES, ("P1",), domains=["clinical"])
    assert cs.skipped == {"dx scc is not a model class": 1, "no note of P3": 1}
    assert len(cs) == len(train) - 2
    assert len(mixed) == len(train) - 1 and mixed.notes["P3"].count(None) == 1
    assert {c.domain for c in clinical.cases} == {"clinical"}
    assert [DX_CLASSES[i] for i in cs.labels] == [c.dx for c in cs.cases]
    assert cs.summary()["n"] == len(cs) and sum(cs.summary()["dx"].values()) == len(cs)


def test_image_text_batches_give_model_inputs(synth_home):
    torch.manual_seed(0)
    model = build_model(TINY.model, DX_CLASSES)
    with CaseStore(synth_home) as store:
        cs = load_case_set(store, "train", DX_CLASSES, ("P1", "clinical"))
        batches = ImageTextBatches(store, cs, model, 8, augment=True, balanced=True, seed=0, device=torch.device("cpu"))
        epoch = list(batches.epoch(0))
        resumed = list(batches.epoch(0, start=2))
    assert len(epoch) == batches.steps_per_epoch == len(cs) // 8
    inputs, labels = epoch[0]
    assert inputs["images"].shape == (8, 3, 32, 32) and labels.shape == (8,)
    assert inputs["input_ids"].shape[0] == 8 and inputs["attention_mask"].shape == inputs["input_ids"].shape
    assert len(resumed) == len(epoch) - 2
    assert torch.equal(resumed[0][1], epoch[2][1])  # the same items, without loading the skipped batches
    assert model(**inputs).fused_logits.shape == (8, len(DX_CLASSES))


def test_feature_cache_computes_each_input_once_and_matches_the_towers(synth_home, monkeypatch):
    torch.manual_seed(0)
    model = build_model(TINY.model, DX_CLASSES)
    model.freeze_backbones()
    cpu = torch.device("cpu")
    with CaseStore(synth_home) as store:
        cs = load_case_set(store, "train", DX_CLASSES, ("P1", "M"))
        images, texts = cached_features(model, store, cs, synth_home / "cache", cpu, batch_size=16)
        files = list((synth_home / "cache" / "features").rglob("*.npy"))
        assert len(files) == len(cs) + len(set(cs.notes["P1"]) | set(cs.notes["M"]))  # equal M notes stored once
        calls = Counter()
        monkeypatch.setattr(model.image_encoder, "forward", lambda x: calls.update(image=1) or None)
        monkeypatch.setattr(model.text_encoder, "forward", lambda *a, **k: calls.update(text=1) or None)
        again_images, again_texts = cached_features(model, store, cs, synth_home / "cache", cpu, batch_size=16)
        monkeypatch.undo()
        assert not calls  # every feature came from the cache
        assert torch.equal(images, again_images) and torch.equal(texts, again_texts)
        fresh = image_features(model, store, cs.cases[:5], cpu)  # no cache
        np.testing.assert_allclose(images[:5].numpy(), fresh.numpy(), atol=1e-5)
        direct = model.text_encoder(**model.tokenize(cs.notes["M"][:3])).pooled
        np.testing.assert_allclose(texts[1, :3].numpy(), direct.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(
            text_features(model, cs.notes["M"][:3], cpu).numpy(), texts[1, :3].numpy(), atol=1e-6
        )
    assert images.shape == (len(cs), 32) and texts.shape == (2, len(cs), 32)
    np.load(files[0], allow_pickle=False)  # plain arrays, never pickles

    # New weights are another tower: the cache must not answer for them.
    with torch.no_grad():
        model.image_encoder.conv1.weight.add_(1.0)
    with CaseStore(synth_home) as store:
        changed, _ = cached_features(model, store, cs, synth_home / "cache", cpu)
    assert not torch.allclose(changed, images)

    batches = FeatureBatches(cs, images, texts, 8, balanced=True, seed=0, device=cpu)
    inputs, labels = next(batches.epoch(0))
    assert set(inputs) == {"image_features", "text_features"} and inputs["text_features"].shape == (8, 32)
    assert model.heads(**inputs).fused_logits.shape == (8, len(DX_CLASSES))
    assert sum(len(y) for _, y in batches.ordered(5)) == len(cs)


def test_caching_features_leaves_the_model_explainable(synth_home):
    """Feature extraction runs under inference_mode; the model's own weights must stay normal tensors."""
    from mmcore.explain_image import attribute_image

    model = build_model(load_config("tiny", env={}).model, DX_CLASSES).eval()
    with CaseStore(synth_home) as store, torch.inference_mode():
        cases = store.cases()[:4]
        image_features(model, store, cases, torch.device("cpu"))
    assert not any(p.is_inference() for p in model.parameters())
    images = torch.randn(1, 3, 32, 32)
    assert attribute_image(model, images, "gradcam").shape == (1, 32, 32)


def test_partial_batches_draw_a_view_per_case_and_epoch_and_resume_mid_epoch():
    from mmcore.datasets import PartialBatches

    n, views = 20, 3
    cs = _case_set(n, ("P1",))
    cs.labels = np.arange(n) % 4
    acts = torch.arange(n * views, dtype=torch.float32).view(n, views, 1, 1, 1).expand(n, views, 2, 2, 2).clone()
    text = torch.randn(1, n, 5)
    outliers = torch.full((7, 2, 2, 2), -1.0)
    cpu = torch.device("cpu")
    kw = {"train_views": views, "balanced": True, "seed": 3, "device": cpu, "outlier_acts": outliers}
    batches = PartialBatches(cs, acts, text, 4, **kw)
    epoch = list(batches.epoch(0))
    assert len(epoch) == batches.steps_per_epoch == 5
    inputs, labels = epoch[0]
    assert inputs["image_acts"].shape == (4, 2, 2, 2) and inputs["text_features"].shape == (4, 5)
    assert inputs["outlier_acts"].shape == (2, 2, 2, 2) and (inputs["outlier_acts"] == -1).all()
    # image_acts[i, v] holds i * views + v: every batch row is case i's view of that epoch, labels follow the case.
    code = inputs["image_acts"][:, 0, 0, 0].long()
    case, view = code // views, code % views
    assert torch.equal(labels, torch.as_tensor(cs.labels)[case])
    assert torch.equal(view, torch.as_tensor(batches.views_of(0))[case])
    seen = {int(v) for e in range(4) for v in batches.views_of(e)}
    assert seen == {0, 1, 2} and not np.array_equal(batches.views_of(0), batches.views_of(1))
    again = list(PartialBatches(cs, acts, text, 4, **kw).epoch(0, start=2))  # a resumed run, mid-epoch
    for (a, ya), (b, yb) in zip(again, epoch[2:], strict=True):
        assert torch.equal(ya, yb) and all(torch.equal(a[k], b[k]) for k in a)
    ordered = [x for x, _ in batches.ordered(8)]
    assert all((x["image_acts"][:, 0, 0, 0].long() % views == 0).all() for x in ordered)  # the clean view
    assert "outlier_acts" not in ordered[0] and sum(len(x["image_acts"]) for x in ordered) == n


def test_partial_batches_pad_the_notes_trunk_states():
    from mmcore.datasets import PartialBatches, pad_states

    hidden, mask = pad_states([torch.ones(3, 4), torch.ones(5, 4)])
    assert hidden.shape == (2, 5, 4) and mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5] and hidden[0, 3:].eq(0).all()
    n = 8
    cs = _case_set(n, ("P1", "M"))
    states = {s: [torch.randn(2 + i % 3, 6) for i in range(n)] for s in cs.strategies}
    batches = PartialBatches(
        cs, torch.randn(n, 1, 2, 1, 1), states, 4, train_views=1, balanced=False, seed=0, device=torch.device("cpu")
    )
    inputs, _ = next(batches.epoch(0))
    assert set(inputs) == {"image_acts", "text_acts", "attention_mask"}
    order, choice = epoch_order(cs.labels, 0, 0, False)[:4], choose_notes(cs, 0, 0)
    expected = [states[cs.strategies[choice[i]]][i] for i in order]
    assert inputs["attention_mask"].sum(1).tolist() == [len(x) for x in expected]
    for row, mask, x in zip(inputs["text_acts"], inputs["attention_mask"], expected, strict=True):
        assert torch.equal(row[mask.bool()], x)


def test_decode_threads_give_the_datasets_items_in_order_and_stop_with_their_caller(synth_home):
    import threading

    from mmcore.datasets import CaseImages, decoded_batches

    model = build_model(TINY.model, DX_CLASSES)
    with CaseStore(synth_home) as store:
        dataset = CaseImages(store, store.cases()[:23], model.image_transform(train=False))
        batches = list(decoded_batches(dataset, batch_size=5, threads=3))
        assert [len(idx) for _, idx in batches] == [5, 5, 5, 5, 3]
        assert torch.cat([idx for _, idx in batches]).tolist() == list(range(23))  # in order, each once
        for i in (0, 7, 22):
            images, idx = batches[i // 5]
            assert torch.equal(images[i % 5], dataset[i][0])
        stream = decoded_batches(dataset, batch_size=5, threads=3)
        next(stream)
        stream.close()  # a caller that stops early: the pool shuts down, no decode left running
    assert not [t for t in threading.enumerate() if t.name.startswith("mmderm-decode")]
