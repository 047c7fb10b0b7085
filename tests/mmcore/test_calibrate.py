"""Temperature scaling and the expected calibration error (mmcore.calibrate)."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.calibrate import (
    T_MAX,
    T_MIN,
    Calibration,
    apply_temperature,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    nll,
    reliability_bins,
)


def _overconfident(n: int = 1500, classes: int = 5, scale: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z) (so z is calibrated) and logits scale * z (over-confident by `scale`)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return scale * z, labels


def test_calibrated_probabilities_sum_to_one_and_keep_the_argmax():
    logits = np.random.default_rng(1).normal(0, 4, (200, 7))
    for t in (0.1, 0.7, 1.0, 3.0, 20.0):
        probs = apply_temperature(logits, t)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
        assert (probs.argmax(1) == logits.argmax(1)).all()
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_fitting_recovers_the_overconfidence_and_lowers_nll_and_ece():
    logits, labels = _overconfident(scale=3.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.15)  # the logits were 3x too sharp
    assert nll(logits, labels, t) < nll(logits, labels, 1.0) - 0.1
    before = expected_calibration_error(apply_temperature(logits, 1.0), labels)
    after = expected_calibration_error(apply_temperature(logits, t), labels)
    assert before > 0.1 and after < 0.05


def test_temperature_fits_small_sets_and_stays_in_range():
    logits, labels = _overconfident(n=50, scale=2.0, seed=3)
    assert T_MIN <= fit_temperature(logits, labels) <= T_MAX
    separable = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 5.0  # every case right: sharper is always better
    assert fit_temperature(separable, np.array([0, 1, 2, 0, 1, 2])) == pytest.approx(T_MIN, rel=1e-3)
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1, 2]))


def test_ece_matches_torchmetrics_docstring_example():
    # torchmetrics.functional.classification.multiclass_calibration_error(preds, target, num_classes=3, n_bins=3,
    # norm="l1") == 0.2000 in its docstring. By hand: bin [1/3, 2/3) holds 0.55 (wrong), 0.55 (wrong), 0.60 (right):
    # |1/3 - 0.5667| * 3/4 = 0.175; bin [2/3, 1) holds 0.90 (right): |1 - 0.9| * 1/4 = 0.025.
    preds = np.array([[0.25, 0.20, 0.55], [0.55, 0.05, 0.40], [0.10, 0.30, 0.60], [0.90, 0.05, 0.05]])
    target = np.array([0, 1, 2, 0])
    assert expected_calibration_error(preds, target, n_bins=3) == pytest.approx(0.2, abs=1e-6)


def test_ece_bins_are_left_closed_and_a_confidence_of_one_has_its_own_slot():
    # torchmetrics bucketizes with right=True: 0.5 belongs to [0.5, 1), with 0.75.
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    labels = np.array([0, 0])  # the first is right (argmax 0), the second wrong
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(abs(0.5 - 0.625))
    # 1.0 (wrong) alone in the extra slot: |0 - 1| / 2; 0.96 (right) in [14/15, 1): |1 - 0.96| / 2.
    probs = np.array([[1.0, 0.0], [0.96, 0.04]])
    assert expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(0.52, abs=1e-6)


def test_reliability_bins_have_fixed_edges_and_agree_with_the_ece():
    logits, labels = _overconfident(n=300, scale=1.5, seed=2)
    probs = apply_temperature(logits, 1.0)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    assert sum(b["count"] for b in bins) == 300
    ece = sum(b["count"] / 300 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert ece == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)
    assert all(b["confidence"] is None for b in bins if not b["count"])


def test_calibration_round_trips_through_a_dict_and_refuses_bad_temperatures():
    logits, labels = _overconfident(n=400)
    cal = fit_calibration({"image": logits, "fused": logits / 2}, labels)
    assert cal.ece_after["image"] < cal.ece_before["image"] and cal.n == 400
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    np.testing.assert_array_equal(
        again.probabilities("image", logits), apply_temperature(logits, cal.temperatures["image"])
    )
    np.testing.assert_array_equal(again.probabilities("text", logits), apply_temperature(logits, 1.0))
    for bad in ({"image": -1.0}, {"image": "2"}, None):
        with pytest.raises(ValueError):
            Calibration.from_dict({"temperatures": bad})
