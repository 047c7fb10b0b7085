"""Out-of-distribution scoring (mmcore.ood): the scores, thresholds, persistence, and the demo tower on real inputs."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import load_config
from mmcore.model import build_model
from mmcore.notes import write_note
from mmcore.ood import (
    META_FILE,
    WEIGHTS_FILE,
    OODFileError,
    OODScorer,
    fit_image_ood,
    fit_mahalanobis,
    fit_note_ood,
    fit_ood,
    image_ood_features,
    knn_distance,
    l2_normalise,
    load_ood,
    mahalanobis_distance,
    note_features,
    pass_threshold,
)
from mmcore.synthderm import generate

TINY = load_config("tiny", env={})


def _clusters(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = rng.normal(0, 3, (3, dim))
    return (centres[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32), labels


# ---- the scores ----


def test_knn_distance_is_the_distance_to_the_kth_nearest_unit_vector():
    angles = np.radians([0, 10, 30, 90])
    bank = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    query = np.array([[2.0, 0.0]])  # normalised to angle 0: neighbours at 0, 10, 30, 90 degrees
    for k, deg in ((1, 0), (2, 10), (3, 30)):
        assert knn_distance(bank, query, k)[0] == pytest.approx(2 * np.sin(np.radians(deg) / 2), abs=1e-6)


def test_mahalanobis_is_euclidean_for_isotropic_classes_and_min_over_classes():
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 8, [10.0] * 8])
    labels = np.repeat([0, 1], 2000)
    feats = means[labels] + rng.normal(0, 1, (4000, 8))
    centres, whiten = fit_mahalanobis(feats, labels)
    query = np.array([[0.0] * 7 + [3.0], [10.0] * 8])
    d = mahalanobis_distance(centres, whiten, query)
    assert d[0] == pytest.approx(3.0, rel=0.05) and d[1] == pytest.approx(0.0, abs=0.2)


def test_threshold_lets_the_chosen_share_of_validation_pass():
    scores = np.random.default_rng(0).permutation(np.arange(1, 101, dtype=float))
    assert pass_threshold(scores, 0.95) == (95.0, 0.95)
    threshold, rate = pass_threshold(np.arange(30, dtype=float), 0.95)
    assert rate >= 0.95 and np.mean(np.arange(30) <= threshold) == rate


# ---- persistence ----


def _scorer() -> OODScorer:
    feats, labels = _clusters(300)
    val, _ = _clusters(60, seed=1)
    image = fit_image_ood(feats[:240], labels[:240], val)  # the default: Mahalanobis
    texts = ["A 6 mm lesion on the back, dark brown and black.", "Lesion on the arm, tan, symmetric, no bleeding."]
    note = fit_note_ood(texts * 10, feats[:20], feats[20:40], k=3)
    return OODScorer(image, note)


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path):
    scorer = _scorer()
    assert sorted(scorer.save(tmp_path)) == sorted([WEIGHTS_FILE, META_FILE])
    again = load_ood(tmp_path)
    query, _ = _clusters(50, seed=7)
    np.testing.assert_array_equal(again.image.score(query), scorer.image.score(query))
    assert again.image.threshold == scorer.image.threshold and again.image.val_pass_rate >= 0.95
    texts = ["dark brown lesion on the back"] * 50
    assert again.note.verdicts(texts, query) == scorer.note.verdicts(texts, query)
    assert load_ood(tmp_path / "missing") is None  # a version saved before OOD scoring existed


def _tamper_cases(folder: Path) -> dict[str, Callable[[], None]]:
    weights, meta = folder / WEIGHTS_FILE, folder / META_FILE

    def truncate():
        weights.write_bytes(weights.read_bytes()[:-100])

    def nan_in_bank():  # a valid safetensors file whose first float became NaN
        data = bytearray(weights.read_bytes())
        start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
        data[start : start + 4] = struct.pack("<f", float("nan"))
        weights.write_bytes(bytes(data))

    def wrong_shape():
        m = json.loads(meta.read_text())
        m["shapes"]["image.centres"][0] += 1
        meta.write_text(json.dumps(m))

    def wrong_schema():
        m = json.loads(meta.read_text())
        m["schema_version"] = 99
        meta.write_text(json.dumps(m))

    def threshold_not_a_number():
        m = json.loads(meta.read_text())
        m["image"]["threshold"] = "high"
        meta.write_text(json.dumps(m))

    def not_json():
        meta.write_text("{")

    def no_weights():
        weights.unlink()

    cases = (truncate, nan_in_bank, wrong_shape, wrong_schema, threshold_not_a_number, not_json, no_weights)
    return {f.__name__: f for f in cases}


@pytest.mark.parametrize(
    "tamper",
    ["truncate", "nan_in_bank", "wrong_shape", "wrong_schema", "threshold_not_a_number", "not_json", "no_weights"],
)
def test_a_tampered_or_truncated_file_is_refused(tmp_path: Path, tamper: str):
    _scorer().save(tmp_path)
    _tamper_cases(tmp_path)[tamper]()
    with pytest.raises(OODFileError):
        OODScorer.load(tmp_path)
    assert issubclass(OODFileError, ValueError)


# ---- the demo configuration's image tower on real inputs ----


def _text_page() -> Image.Image:
    page = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(page)
    for line in range(30):
        draw.text(
            (40, 30 + 25 * line), f"Lorem ipsum dolor sit amet, consectetur adipiscing elit {line}.", fill="black"
        )
    return page


@pytest.mark.slow
def test_the_demo_tower_flags_a_cat_and_a_page_of_text_but_not_synthderm():
    skimage_data = pytest.importorskip("skimage.data")
    from mmcore.image_encoders import build_image_encoder, image_transform

    torch.set_num_threads(2)
    encoder = build_image_encoder(load_config("demo", env={}).model).eval()  # EfficientNet-Lite0, ImageNet weights
    transform = image_transform(encoder.spec)
    synth = list(generate(64, seed=11, balanced=True, size=224))
    cat, page = Image.fromarray(skimage_data.chelsea()), _text_page()
    images = torch.stack([transform(x) for x in [s.image for s in synth] + [cat, page]])
    with torch.inference_mode():  # channels_last: the faster CPU layout for EfficientNet, as datasets.py uses
        encoder = encoder.to(memory_format=torch.channels_last)
        feats = encoder(images.contiguous(memory_format=torch.channels_last)).numpy()  # (66, 1280)
    labels = np.array([DX_CLASSES.index(s.case.dx) for s in synth])
    scorer = fit_image_ood(feats[:40], labels[:40], feats[40:52])  # what versions use: Mahalanobis
    held_out = scorer.verdicts(feats[52:64])
    cat_verdict, page_verdict = scorer.verdicts(feats[64:])
    assert not cat_verdict.in_distribution and not page_verdict.in_distribution
    assert cat_verdict.reasons and "does not look like" in cat_verdict.reasons[0]
    assert sum(v.in_distribution for v in held_out) >= 10  # 12 held-out lesions; 95% pass on validation
    # a margin, not a coin toss: both lie well beyond every held-out lesion
    assert min(cat_verdict.score, page_verdict.score) > max(v.score for v in held_out)


# ---- notes ----


def _notes(n: int, start: int = 0) -> list[str]:
    cases = [s.case for s in generate(n, seed=5, size=32, start=start)]
    return [write_note(s, c, seed=5) for c in cases for s in ("P1", "clinical")]


def test_gibberish_and_a_german_note_are_flagged_and_a_training_style_note_passes():
    # Tiny random text tower: its kNN distance means little, so the vocabulary checks carry this test.
    model = build_model(TINY.model, DX_CLASSES).eval()
    train, val, held_out = _notes(60), _notes(15, start=60), _notes(5, start=75)
    scorer = fit_note_ood(train, note_features(model, train), note_features(model, val), k=5)
    odd = [
        "asdf qwer zxcv uiop hjkl",
        "Patientin, 54 Jahre. Pigmentierte Läsion am Rücken, seit sechs Monaten größer geworden, unscharf begrenzt.",
        "Patient name: ____ DOB: ____ Findings: ____ Plan: ____",
        "",
        "Red raised spot on the trunk, bleeds easily when knocked, appeared a few weeks ago.",  # plain English
    ]
    verdicts = scorer.verdicts(odd + held_out, note_features(model, odd + held_out))
    gibberish, german, template, empty, plain = verdicts[:5]
    assert plain.in_distribution, plain.reasons  # a clinician's own wording is not "another language"
    assert not gibberish.in_distribution and "almost no words this model learned from" in gibberish.reasons[0]
    assert not german.in_distribution and "another language" in german.reasons[0]
    assert not template.in_distribution and "almost no clinical words this model learned from" in template.reasons[0]
    assert not empty.in_distribution
    assert all(v.in_distribution and not v.reasons for v in verdicts[5:])  # our own notes pass the word checks


def test_fit_ood_on_a_case_store_thresholds_on_validation_and_round_trips(synth_home: Path, tmp_path: Path):
    model = build_model(TINY.model, DX_CLASSES).eval()
    with CaseStore(synth_home) as store:
        scorer = fit_ood(model, store, ("P1",), cache_dir=tmp_path / "cache", k=3)
    assert scorer.image.val_pass_rate >= 0.95 and scorer.note.val_pass_rate >= 0.95
    assert scorer.image.n_train > scorer.image.n_val > 0 and scorer.image.feature_dim == 32
    assert scorer.card()["image"]["method"] == "mahalanobis" and scorer.card()["note"]["val_pass_rate"] >= 0.95
    scorer.save(tmp_path)
    images = torch.rand(4, 3, 32, 32)
    feats = image_ood_features(model, images)  # (4, 32)
    np.testing.assert_array_equal(OODScorer.load(tmp_path).image.score(feats), scorer.image.score(feats))
    assert np.isfinite(l2_normalise(feats)).all()
