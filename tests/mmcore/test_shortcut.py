"""The shortcut check on the tiny configuration: a partially fine-tuned tiny model that could read the class from the
background (a planted shortcut) must not be confident on images without their lesion once trained with outlier
exposure; and `shortcut_check` scores SynthDerm scenes drawn with and without their lesion."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mmcore.calibrate import apply_temperature, fit_temperature
from mmcore.cases import DX_CLASSES
from mmcore.config import load_config
from mmcore.model import build_model
from mmcore.shortcut import shortcut_check
from mmcore.train import objective

sys.path.insert(0, str(Path(__file__).parent))
from explain_toys import MEL, striped_squares, toy_model  # noqa: E402


def _with_shortcut(n: int, seed: int, agree: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Striped squares (the lesion: its stripes give the class) on a background tinted by the class in `agree` of
    the cases (the shortcut); and the same images without their square (the lesion removed)."""
    images, masks, labels = striped_squares(n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    follows = torch.rand(n, generator=g) < agree
    warm = torch.where(follows, labels == MEL, labels != MEL)  # (n,) the tint says mel
    tint = torch.where(warm, 0.8, -0.8).view(n, 1, 1, 1) * torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    background = ~masks.unsqueeze(1)  # (n, 1, S, S)
    images = images + tint * background
    plain = images.clone()
    fill = images.masked_select(background.expand_as(images)).view(n, 3, -1).median(-1).values  # (n, 3)
    plain = torch.where(masks.unsqueeze(1), fill.view(n, 3, 1, 1), plain)  # the square painted over with skin
    return images, plain, labels


def _train(outlier_exposure: float) -> tuple[float, float]:
    """(mean top probability on lesion-free held-out images after temperature scaling, accuracy with the lesion)."""
    torch.manual_seed(0)
    model = toy_model(0)
    trunk, _, partial = model.split_towers(1, 0)
    model.train()
    cfg = load_config("tiny", env={}).replace(**{"loss.ce_text": "0", "loss.outlier_exposure": str(outlier_exposure)})
    optimizer = torch.optim.Adam([p for p in partial.parameters() if p.requires_grad], lr=1e-2)
    for step in range(50):
        images, plain, labels = _with_shortcut(24, step, agree=0.9)
        with torch.no_grad():  # what the activation cache holds: trunk outputs, lesion-free ones too
            acts, outliers = trunk(images), trunk(plain[:12])
        out = partial(image_acts=acts, outlier_acts=outliers if outlier_exposure else None)
        loss, _ = objective(out, labels, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    val, _, val_labels = _with_shortcut(64, 5_000, agree=0.9)
    test, plain, test_labels = _with_shortcut(64, 6_000, agree=0.9)
    with torch.no_grad():
        logits = {k: model(images=x).image_logits.numpy() for k, x in (("val", val), ("test", test), ("plain", plain))}
    temperature = fit_temperature(logits["val"], val_labels.numpy())  # as every version is calibrated
    accuracy = float((logits["test"].argmax(1) == test_labels.numpy()).mean())
    return float(apply_temperature(logits["plain"], temperature).max(1).mean()), accuracy


def test_outlier_exposure_keeps_a_tiny_model_unsure_without_the_lesion():
    torch.set_num_threads(1)
    confident, accuracy = _train(outlier_exposure=0.0)
    unsure, accuracy_oe = _train(outlier_exposure=0.5)
    assert accuracy >= 0.9 and accuracy_oe >= 0.9  # both read the stripes when the square is there
    assert confident > 0.6  # without outlier exposure the background tint alone makes it sure: the shortcut
    assert unsure <= 0.5 and unsure < confident - 0.1


def test_shortcut_check_scores_scenes_with_and_without_their_lesion():
    torch.manual_seed(0)
    model = build_model(load_config("tiny", env={}).model, DX_CLASSES).eval()
    result = shortcut_check(model, temperature=2.0, n=6)
    assert result["n"] == 6 and result["chance"] == pytest.approx(1 / len(DX_CLASSES))
    for key in ("without_lesion", "with_lesion"):
        row = result[key]
        assert 1 / len(DX_CLASSES) <= row["mean_top_probability"] <= 1
        assert sum(row["predicted"].values()) == pytest.approx(1)
        assert set(row["by_domain"]) <= {"dermoscopy", "clinical", "atlas"}
    assert result["without_lesion"] != result["with_lesion"]  # other pictures, other scores
