"""Explanation quality against masks: pointing game and IoU on hand-made maps, deletion AUC ordering, and a
version's scores stored in its card by `eval --explanations`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from explain_toys import toy_model
from torch import nn

from mmcore.config import load_config
from mmcore.explain_quality import deletion_auc, iou_at_top, pointing_game
from mmcore.overlays import top_region


def test_deletion_auc_is_lower_when_the_evidence_goes_first():
    class Region(nn.Module):  # logit of class 1 = mean of the top-left quadrant
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            score = x[:, :, :8, :8].mean((1, 2, 3)) * 10
            return torch.stack([torch.zeros_like(score), score], -1)

    images = torch.ones(1, 3, 16, 16)
    right = np.zeros((16, 16), dtype=np.float32)
    right[:8, :8] = 1.0
    good, bad = deletion_auc(Region(), images, right, 1), deletion_auc(Region(), images, 1 - right, 1)
    assert good < bad - 0.3


def test_mask_metrics_on_hand_made_maps():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:5] = True
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2:5, 2:5] = 1.0
    assert pointing_game(heat, mask) == 1.0 and pointing_game(1 - heat, mask) == 0.0
    assert iou_at_top(heat, mask) == pytest.approx(1.0)  # top 9% == the mask
    assert iou_at_top(heat, mask, 0.2) == pytest.approx(9 / 20)
    assert top_region(heat, 0.09).sum() == 9
    small = np.kron(heat[::2, ::2], np.ones((2, 2)))[:10, :10]  # a map at another resolution is resized first
    assert pointing_game(small[::2, ::2], mask) == 1.0


def test_eval_explanations_scores_synthderm_masks_and_stores_them_in_the_card(tmp_path, monkeypatch, capsys):
    from mmcore.cases import CaseStore
    from mmcore.commands import main
    from mmcore.model_store import read_card, save_version
    from mmcore.synthderm import generate_into

    monkeypatch.setenv("MMDERM_HOME", str(tmp_path))
    with CaseStore(tmp_path) as store:
        generate_into(store, 6, seed=3, size=64)
        split = store.cases()[0].split
    cfg = load_config("tiny")
    version = save_version(toy_model().eval(), cfg)
    argv = ["eval", "--explanations", "--config", "tiny", "--model", version, "--split", split, "--limit", "2"]
    assert main([*argv, "--methods", "gradcam,occlusion", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cases"] == 2 and out["reference"]["seed_002_lesion_iou"] == 0.89
    assert set(out["methods"]) == {"gradcam", "occlusion", "random", "centre"}
    for row in out["methods"].values():
        assert 0 <= row["pointing_game"] <= 1 and 0 <= row["iou_mask_area"] <= 1 and 0 <= row["deletion_auc"] <= 1
    quality = read_card(cfg, version).explanation_quality
    assert quality["n"] == 2 and set(quality["methods"]) == {"gradcam", "occlusion"}
    assert set(quality["baselines"]) == {"random", "centre"}
    assert main([*argv, "--methods", "gradcam"]) == 0
    text = capsys.readouterr().out
    assert "IoU@mask" in text and "0.89" in text and "seed 002" in text
    assert main([*argv, "--methods", "lime"]) == 2 and "unknown method(s) lime" in capsys.readouterr().err
