"""The verdict on a request's inputs: a photo and a note checked against the version's OOD scorer, said in plain
words with what the model learned from; patient details normalised and warned about where training was thin."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmcore.model_card import DataSummary, ModelCard, TrainingData
from mmcore.ood import OODScorer, fit_image_ood, fit_note_ood
from mmcore.trust import check_inputs, check_metadata, trained_on_short

CARD = ModelCard(
    trained_on="SynthDerm: procedurally drawn lesions, not real photographs (980 training cases)",
    training_data=TrainingData(train=DataSummary(n=100, fitzpatrick={"2": 90, "6": 3}, site={"back": 100})),
)
NOTES = ["brown macule on the back, regular network", "pink nodule on the face with arborizing vessels"] * 10


@pytest.fixture
def scorer() -> OODScorer:
    rng = np.random.default_rng(0)
    towards = np.eye(8)[0] * 4  # the training photos' features point one way; normalised, direction is what counts
    image = fit_image_ood(rng.normal(size=(60, 8)) + towards, np.arange(60) % 3, rng.normal(size=(30, 8)) + towards)
    feats = rng.normal(size=(len(NOTES), 4))
    return OODScorer(image=image, note=fit_note_ood(NOTES, feats, feats[:10]))


def test_without_a_scorer_the_verdict_is_unknown():
    check = check_inputs(None, CARD, np.zeros((1, 8)), "a note", np.zeros((1, 4)))
    assert check.in_distribution is None and check.reasons == [] and check.ood_score is None


def test_a_far_photo_is_flagged_in_words_that_name_the_training_data(scorer):
    far = check_inputs(scorer, CARD, -np.eye(8)[:1], None, None)
    assert far.in_distribution is False and far.ood_score > far.ood_threshold
    assert far.reasons == [
        "This photo is unlike the cases this model learned from (SynthDerm: procedurally drawn lesions, not real "
        "photographs); its scores would mean nothing."
    ]
    assert trained_on_short(dataclasses.replace(CARD, trained_on="")) == "its training data"


def test_a_garbled_note_is_flagged_and_a_known_one_passes(scorer):
    rng = np.random.default_rng(1)
    garbled = check_inputs(scorer, CARD, None, "qwx zvbn plok trel", rng.normal(size=(1, 4)))
    assert garbled.in_distribution is False and "another language or garbled" in garbled.reasons[0]
    known = check_inputs(scorer, CARD, None, NOTES[0], rng.normal(size=(1, 4)))
    assert known.reasons == [] and known.in_distribution is True and set(known.verdicts) == {"note"}


def test_patient_details_are_normalised_and_thin_training_data_is_named():
    clean, warnings = check_metadata(CARD, {"age": "61", "sex": "F", "fitzpatrick": "VI", "site": "back", "x": 1})
    assert clean == {"age": 61.0, "sex": "female", "fitzpatrick": 6, "site": "posterior torso"}
    assert "ignored metadata fields: x" in warnings
    assert any("few training cases with Fitzpatrick type 6 (3 of 100)" in w for w in warnings)
    assert any("few training cases with site posterior torso (0 of 100)" in w for w in warnings)
    with pytest.raises(ValueError):
        check_metadata(CARD, {"age": -4})
