"""Calibration of a version's scores: one temperature per modality fitted on validation logits (temperature scaling,
Guo et al. 2017), and the top-label expected calibration error (ECE) binned exactly as torchmetrics does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # a temperature outside this range means the validation set, not the model, is odd
MODALITIES = ("image", "text", "fused")
_GOLDEN = (math.sqrt(5) - 1) / 2


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # (N, C)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) logits -> (N, C) probabilities softmax(logits / T): rows sum to 1, the argmax is unchanged."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)  # (N, C)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] minimising the NLL of softmax(logits / T) on (N, C) logits and (N,) labels.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over log T on the bounded interval
    finds the minimum without gradients or a starting point (robust for N of a few dozen; a separable set runs to
    T_MIN rather than to zero).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise ValueError(f"need (N, C) logits and (N,) labels with N > 0, got {logits.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must index the {logits.shape[1]} classes")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while hi - lo > 1e-6:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def _binned(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin slot (n_bins + 1): count, mean confidence and accuracy of the top label (0 where empty).

    As torchmetrics' `_binning_bucketize` (src/torchmetrics/functional/classification/calibration_error.py):
    float32 confidences, boundaries torch.linspace(0, 1, n_bins + 1) in float32, and
    `torch.bucketize(confidences, boundaries, right=True) - 1`, so bins are left-closed [lo, hi) and a confidence
    of exactly 1.0 falls in an extra slot of its own (index n_bins).
    """
    probs = np.asarray(probs)
    confidence = probs.max(axis=1).astype(np.float32)  # (N,)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)  # (N,)
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32)  # what torch.linspace gives in float32
    which = np.searchsorted(edges, confidence, side="right") - 1  # == torch.bucketize(right=True) - 1
    count = np.bincount(which, minlength=n_bins + 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.nan_to_num(np.bincount(which, confidence.astype(np.float64), n_bins + 1) / count)
        acc = np.nan_to_num(np.bincount(which, correct, n_bins + 1) / count)
    return count, conf, acc


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE (L1) over `n_bins` equal-width bins: torchmetrics' MulticlassCalibrationError(norm="l1").

    ECE = sum over bins of (cases in bin / N) * |accuracy in bin - mean confidence in bin|; NaN for no cases.
    """
    if not len(labels):
        return math.nan
    count, conf, acc = _binned(probs, labels, n_bins)
    return float(np.sum(np.abs(acc - conf) * count / count.sum()))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """The `n_bins` bins of a reliability plot ({lo, hi, count, confidence, accuracy}; None where empty).

    Same binning as expected_calibration_error, except that confidences of exactly 1.0 are shown in the last bin
    (closed at 1.0) instead of a slot of their own, so a plot always has `n_bins` points to draw.
    """
    count, conf, acc = _binned(probs, labels, n_bins)
    n_last = count[-2] + count[-1]
    if count[-1]:
        conf[-2] = (conf[-2] * count[-2] + conf[-1] * count[-1]) / n_last
        acc[-2] = (acc[-2] * count[-2] + acc[-1] * count[-1]) / n_last
    count[-2] = n_last
    edges = np.linspace(0, 1, n_bins + 1)
    return [
        {
            "lo": float(edges[b]),
            "hi": float(edges[b + 1]),
            "count": int(count[b]),
            "confidence": float(conf[b]) if count[b] else None,
            "accuracy": float(acc[b]) if count[b] else None,
        }
        for b in range(n_bins)
    ]


@dataclass
class Calibration:
    """A version's temperatures per modality ("image", "text", "fused") and the ECE they buy on `n` cases."""

    temperatures: dict[str, float]
    ece_before: dict[str, float] = field(default_factory=dict)
    ece_after: dict[str, float] = field(default_factory=dict)
    n: int = 0
    split: str = "val"
    n_bins: int = ECE_BINS

    def probabilities(self, modality: str, logits: np.ndarray) -> np.ndarray:
        """Calibrated (N, C) probabilities of one modality's logits (T = 1 for a modality without a temperature)."""
        return apply_temperature(logits, self.temperatures.get(modality, 1.0))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict for the model card."""
        return {
            "method": "temperature scaling (Guo et al. 2017), NLL on the validation split",
            "temperatures": dict(self.temperatures),
            "ece_before": dict(self.ece_before),
            "ece_after": dict(self.ece_after),
            "n": self.n,
            "split": self.split,
            "n_bins": self.n_bins,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of to_dict; ValueError for a temperature that is missing, not a number or not positive."""
        temps = data.get("temperatures")
        if not isinstance(temps, dict) or not all(
            isinstance(t, int | float) and math.isfinite(t) and t > 0 for t in temps.values()
        ):
            raise ValueError(f"calibration temperatures must be positive numbers, got {temps!r}")
        return cls(
            temperatures={str(k): float(v) for k, v in temps.items()},
            ece_before={str(k): float(v) for k, v in data.get("ece_before", {}).items()},
            ece_after={str(k): float(v) for k, v in data.get("ece_after", {}).items()},
            n=int(data.get("n", 0)),
            split=str(data.get("split", "val")),
            n_bins=int(data.get("n_bins", ECE_BINS)),
        )


def fit_calibration(logits: dict[str, np.ndarray], labels: np.ndarray, split: str = "val") -> Calibration:
    """A temperature per modality fitted on `logits` (modality -> (N, C)) and the ECE before and after, on the same
    cases (report the held-out ECE with expected_calibration_error on another split)."""
    temps, before, after = {}, {}, {}
    for modality, z in logits.items():
        temps[modality] = fit_temperature(z, labels)
        before[modality] = expected_calibration_error(apply_temperature(z, 1.0), labels)
        after[modality] = expected_calibration_error(apply_temperature(z, temps[modality]), labels)
    return Calibration(temps, before, after, n=len(labels), split=split)
