"""Embedding every case for the index: the best note by preference, resumable by what was embedded (a changed note
is embedded again, an unchanged one is not), a deleted note leaves the text collection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmcore.cases import DX_CLASSES, Case, CaseStore
from mmcore.config import load_config
from mmcore.embeddings import best_note, embed_cases
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
