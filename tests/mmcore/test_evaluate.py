"""Evaluation: metrics against hand-computed values, retrieval on a known ranking, and a tiny model end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from mmcore.calibrate import expected_calibration_error, reliability_bins
from mmcore.cases import CaseStore
from mmcore.commands import main
from mmcore.config import load_config
from mmcore.embeddings import embed_cases
from mmcore.evaluate import (
    balanced_accuracy,
    case_outputs,
    classification_metrics,
    fitzpatrick_group,
    read_evaluations,
    retrieval_metrics,
    run_evaluation,
)
from mmcore.model_store import ModelStoreError, load_version, read_card
from mmcore.train import run_training

CLASSES = ("a", "b", "c")


def _confident(labels: list[int], n_classes: int = 3) -> np.ndarray:
    logits = np.full((len(labels), n_classes), -30.0)
    logits[np.arange(len(labels)), labels] = 30.0
    return logits  # (N, C): softmax is one-hot up to 1e-26


def test_perfect_predictions_score_one_everywhere():
    labels = np.array([0, 1, 2, 0, 1, 2])
    m = classification_metrics(labels, _confident(labels.tolist()), CLASSES)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "kappa", "auroc_macro"):
        assert m[key] == pytest.approx(1.0), key
    assert m["auroc"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert m["ece"] == pytest.approx(0.0, abs=1e-9)
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert sum(b["count"] for b in m["calibration"]) == 6 and len(m["calibration"]) == 15


def test_hand_computed_classification_metrics():
    labels = np.array([0, 0, 0, 0, 1, 1])
    preds = np.array([0, 0, 0, 1, 1, 0])
    # recall of a: 3/4, of b: 1/2 -> balanced accuracy 0.625, plain accuracy 4/6
    assert balanced_accuracy(labels, preds) == pytest.approx(0.625)
    m = classification_metrics(labels, _confident(preds.tolist()), CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1 a = 2*(3/4*3/4)/(3/2) = 0.75, F1 b = 2*(1/2*1/2)/1 = 0.5; class c never appears, so sklearn leaves it out
    assert m["macro_f1"] == pytest.approx(0.625)
    # Cohen's kappa, unweighted: p_o = 4/6 agreement, p_e from the marginals (4/6, 2/6) twice = 5/9
    assert m["kappa"] == pytest.approx((4 / 6 - 5 / 9) / (1 - 5 / 9))
    assert math.isnan(m["auroc"]["c"])  # absent class: NaN, and left out of the macro mean
    assert m["auroc_macro"] == pytest.approx(np.mean([m["auroc"]["a"], m["auroc"]["b"]]))
    assert m["confusion"] == [[3, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_kappa_does_not_treat_diagnosis_codes_as_an_ordinal_scale():
    # Confusing class 0 with 1 or with 2 is the same kind of error: codes are sorted alphabetically, not by severity.
    labels = np.array([0, 0, 1, 1, 2, 2])
    near = classification_metrics(labels, _confident([1, 0, 1, 1, 2, 2]), CLASSES)
    far = classification_metrics(labels, _confident([2, 0, 1, 1, 2, 2]), CLASSES)
    assert near["kappa"] == pytest.approx(far["kappa"])


def test_calibrated_scores_use_the_temperature_and_report_both_eces():
    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = _confident([0, 1, 2, 0, 1, 0]) / 10  # over-confident: one wrong at near-certainty
    plain = classification_metrics(labels, logits, CLASSES)
    warm = classification_metrics(labels, logits, CLASSES, temperature=3.0)
    assert warm["accuracy"] == plain["accuracy"] and warm["confusion"] == plain["confusion"]  # argmax kept
    assert warm["ece_uncalibrated"] == pytest.approx(plain["ece"]) and warm["ece"] != pytest.approx(plain["ece"])


def test_ece_of_known_confidences():
    # two cases at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    ece, bins = expected_calibration_error(probs, labels), reliability_bins(probs, labels)
    assert ece == pytest.approx(0.4)
    filled = [b for b in bins if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(2, 1.0), (2, 0.5)]
    assert filled[0]["confidence"] == pytest.approx(0.6) and filled[1]["confidence"] == pytest.approx(0.9)


def _unit(angles_deg: list[float]) -> np.ndarray:
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)  # (N, 2) on the unit circle


def test_retrieval_on_a_known_ranking():
    # Four cases on a circle: 0 at 0 deg, 1 at 10, 2 at 30, 3 at 65; classes a, b, a, b.
    vecs = _unit([0, 10, 30, 65])
    labels = np.array([0, 1, 0, 1])
    r = retrieval_metrics(vecs, labels, vecs, labels, np.arange(4), same_modality=True)
    # Rankings without the query itself: q0 -> 1,2,3 (same class at rank 2: AP 1/2); q1 -> 0,2,3 (rank 3: 1/3);
    # q2 -> 1,0,3 (rank 2: 1/2); q3 -> 2,1,0 (rank 2: 1/2).
    assert r["mAP"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    assert r["P@5"] == pytest.approx(1 / 3)  # k capped at the 3 others, of which 1 shares the class
    assert "R@1" not in r
    # A random ranking finds, per query, 1 same-class case among its 3 others: chance is 1/3, not 1 / n_classes
    assert r["chance"] == pytest.approx(1 / 3)

    # Cross-modal: notes sit near their own image, but note 1 lies closer to image 0 than to image 1.
    notes = _unit([1, 2, 29, 61])
    x = retrieval_metrics(notes, labels, vecs, labels, np.arange(4), same_modality=False)
    # note 0 -> images 0,1,2,3 (pair at rank 1); note 1 -> 0,1,2,3 (pair at rank 2); note 2 -> 2,1,0,3 (rank 1);
    # note 3 -> 3,2,1,0 (rank 1)
    assert x["R@1"] == pytest.approx(3 / 4) and x["R@5"] == pytest.approx(1.0)
    # same-class ranks: note 0 (a) 1 and 3 -> AP (1 + 2/3)/2; note 1 (b) 2 and 4 -> (1/2 + 2/4)/2;
    # note 2 (a) 1 and 3; note 3 (b) 1 and 3
    expected = np.mean([(1 + 2 / 3) / 2, 1 / 2, (1 + 2 / 3) / 2, (1 + 2 / 3) / 2])
    assert x["mAP"] == pytest.approx(expected)
    assert x["P@5"] == pytest.approx(0.5)  # k capped at the 4 gallery items, 2 of which share the class


def test_retrieval_skips_queries_without_a_same_class_case():
    vecs = _unit([0, 10, 20])
    labels = np.array([0, 0, 1])  # class 1 has a single case: no hit possible for it within one modality
    r = retrieval_metrics(vecs, labels, vecs, labels, np.arange(3), same_modality=True)
    assert r["mAP"] == pytest.approx(1.0)  # queries 0 and 1 find each other first; query 2 is left out


def test_fitzpatrick_groups():
    groups = [fitzpatrick_group(v) for v in (1, 2, 3, 4, 5, 6, None)]
    assert groups == ["1-2", "1-2", "3-4", "3-4", "5-6", "5-6", "unknown"]


@pytest.fixture
def trained(synth_home):
    threads = torch.get_num_threads()
    cfg = dataclasses.replace(load_config("tiny", env={}), home=synth_home).replace(**{"runtime.threads": "1"})
    result = run_training(cfg, synth_home / "runs" / "r", promote=True)
    yield cfg, result.version
    torch.set_num_threads(threads)


def test_evaluation_of_a_trained_model_is_stored_with_the_version(trained):
    cfg, version = trained
    result = run_evaluation(cfg, version, "test", "clinical")
    n = result["n"]
    assert n > 0 and result["version"] == version
    assert set(result["classification"]) == {"image", "text", "fused"}
    assert set(result["retrieval"]) == {"image_to_image", "image_to_text", "text_to_image", "text_to_text"}
    assert {"R@1", "R@5", "R@10"} <= set(result["retrieval"]["image_to_text"])
    assert sum(g["n"] for g in result["by_domain"].values()) == n
    assert sum(g["n"] for g in result["by_fitzpatrick"].values()) == n
    assert len(result["embedding_map"]["x"]) == 2 * n
    confusion = np.array(result["classification"]["fused"]["confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == n
    on_disk = json.loads((cfg.models_dir / version / "eval_test_clinical.json").read_text())
    assert on_disk["classification"]["fused"]["accuracy"] == result["classification"]["fused"]["accuracy"]
    run_evaluation(cfg, version, "val", "P1", limit=5)
    stored = read_evaluations(cfg, version)
    assert list(stored) == ["test_clinical", "val_P1"] and stored["val_P1"]["n"] == 5  # the canonical one first
    with pytest.raises(ModelStoreError):
        read_evaluations(cfg, "../../etc")
    card = read_card(cfg, version)
    assert card.evaluations["test_clinical"].n == n and card.headline is card.evaluations["test_clinical"]
    fused = card.evaluations["test_clinical"].modalities["fused"]
    assert fused.accuracy == result["classification"]["fused"]["accuracy"]
    assert fused.macro_f1 == result["classification"]["fused"]["macro_f1"]
    assert card.evaluations["val_P1"].n == 5 and "balanced_accuracy_fused" in card.training.validation


def test_embedded_cases_are_the_models_own_embeddings(trained):
    cfg, version = trained
    model = load_version(cfg, version, device="cpu").model
    with CaseStore(cfg.home) as store:
        report = embed_cases(model, store, "scratch", ("P1",), batch_size=4)
        ids, image_vecs = store.get_embeddings("scratch", "image")
        _, text_vecs = store.get_embeddings("scratch", "text")
        cases = [store.get(i, with_notes=True) for i in ids]
        transform = model.image_transform(train=False)
        images = torch.stack([transform(store.load_image(c)) for c in cases])  # (N, 3, S, S)
        tokens = model.tokenize([c.notes["P1"] for c in cases])
        outputs = case_outputs(model, store, cases, "P1", torch.device("cpu"))
    assert report.image == report.text == len(ids) == 84 and report.embedded == {"image": 84, "text": 84}
    with torch.no_grad():
        out = model(images, **tokens)
    np.testing.assert_allclose(image_vecs, out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(text_vecs, out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs.fused_logits, out.fused_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(image_vecs, axis=1), 1.0, atol=1e-5)


def test_cli_eval_prints_json(trained, capsys):
    cfg, version = trained
    assert main(["eval", "--config", "tiny", "--limit", "5", "--text-strategy", "P1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n"] == 5 and payload["version"] == version and payload["text_strategy"] == "P1"
    assert main(["eval", "--config", "tiny", "--text-strategy", "nope"]) == 2
    assert "no test cases with a 'nope' note" in capsys.readouterr().err


def _isic_frames(labels: np.ndarray, probs: np.ndarray) -> tuple:
    import pandas as pd

    columns = pd.Index([f"c{i}" for i in range(probs.shape[1])])
    truth = pd.DataFrame(np.eye(probs.shape[1])[labels], columns=columns)
    return truth, pd.DataFrame(probs, columns=columns), pd.Series(np.ones(len(labels)))


@pytest.mark.parametrize("case", ["random", "missing_class", "ties", "one_class_right"])
def test_balanced_accuracy_and_auc_agree_with_the_official_isic_scoring(case):
    """mmcore.evaluate against isic-challenge-scoring (the ISIC Challenge's own package), to 1e-6."""
    from isic_challenge_scoring import metrics as isic

    rng = np.random.default_rng(7)
    n, c = 120, 7
    labels = rng.integers(0, c, n)
    probs = rng.dirichlet(np.ones(c), n)
    if case == "missing_class":
        labels[labels == 3] = 4  # class 3 never occurs in the truth
    elif case == "ties":
        probs = np.round(probs * 4) / 4 + 1e-9  # many equal scores: argmax and ranking ties
    elif case == "one_class_right":
        probs = np.full((n, c), 1 / c)
        probs[labels == 2, 2] = 0.9
    logits = np.log(probs)
    ours = classification_metrics(labels, logits, [f"c{i}" for i in range(c)])
    scored = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1).numpy()  # the very scores we rank
    truth, predicted, weights = _isic_frames(labels, scored)
    assert ours["balanced_accuracy"] == pytest.approx(
        isic.balanced_multiclass_accuracy(truth, predicted, weights), abs=1e-6
    )
    for i in range(c):
        name = f"c{i}"
        if 0 < (labels == i).sum() < n:
            official = isic.auc(truth[name], predicted[name], weights)
            assert ours["auroc"][name] == pytest.approx(official, abs=1e-6), name
        else:
            assert math.isnan(ours["auroc"][name])
