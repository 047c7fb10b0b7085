"""What a finished run leaves: the version's OOD scorer and calibration fitted (files hashed, card filled), its findings
probe, then its test evaluation; `models fit-ood` refits an existing version."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.commands import main
from mmcore.config import load_config
from mmcore.model import build_model
from mmcore.model_store import TamperedModelError, load_version, save_version
from mmcore.register import complete_version, evaluation_strategy, fit_trust


@pytest.fixture
def saved(synth_home):
    cfg = dataclasses.replace(load_config("tiny", env={}), home=synth_home)
    torch.manual_seed(0)
    return cfg, save_version(build_model(cfg.model, DX_CLASSES).eval(), cfg)


def test_fit_trust_stores_a_hashed_scorer_and_temperatures(saved):
    cfg, version = saved
    card = fit_trust(cfg, load_version(cfg, version))
    assert set(card.ood) == {"image", "note"} and card.ood["image"]["method"] == "mahalanobis"
    assert 0.9 <= card.ood["image"]["val_pass_rate"] <= 1.0
    assert set(card.calibration["temperatures"]) == {"image", "text", "fused"}
    assert card.calibration["text_strategy"] == "clinical" and card.calibration["split"] == "val"
    assert {"ood.safetensors", "ood.json"} <= set(card.files)
    loaded = load_version(cfg, version)
    with CaseStore(cfg.home) as store:
        image = store.load_image(store.cases(split="test")[0])
    feats = loaded.model.image_encoder(loaded.model.image_transform()(image)[None]).detach().numpy()
    assert loaded.ood is not None and loaded.ood.image.score(feats)[0] >= 0
    meta = json.loads((loaded.path / "ood.json").read_text())
    meta["image"]["threshold"] = 1e9  # a gate that would let everything through
    (loaded.path / "ood.json").write_text(json.dumps(meta))
    with pytest.raises(TamperedModelError, match="ood.json: SHA-256 mismatch"):
        load_version(cfg, version)


def test_complete_version_evaluates_calibrated_scores_on_test(saved):
    cfg, version = saved
    card = complete_version(cfg, version)
    head = card.evaluations["test_clinical"]
    assert evaluation_strategy(cfg, card) == "clinical" and head.n > 0
    for scores in head.modalities.values():
        assert scores.ece is not None and scores.ece_uncalibrated is not None
    temperatures = card.calibration["temperatures"]
    result = json.loads((cfg.models_dir / version / "eval_test_clinical.json").read_text())
    assert result["classification"]["image"]["temperature"] == pytest.approx(temperatures["image"])
    # The findings probe is fitted on the training split's recorded findings and stored hashed beside the OOD scorer.
    assert {"findings.safetensors", "findings.json"} <= set(card.files) and card.extra["findings"]["probed"]
    assert load_version(cfg, version).card.extra["findings"]["fitted_on"].startswith("train split")


def test_models_fit_ood_refits_an_existing_version(saved, capsys):
    cfg, version = saved
    assert main(["models", "fit-ood", version, "--config", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == version and np.isfinite(out["ood"]["image"]["threshold"])
    assert load_version(cfg, version).ood is not None


@pytest.mark.parametrize(
    ("finetune", "text_layers", "expected"),
    [
        ("heads", 0, {"image": [], "text": []}),
        ("partial", 0, {"image": ["last 2 blocks"], "text": []}),
        ("partial", 1, {"image": ["last 2 blocks"], "text": ["last 1 layers"]}),
        ("full", 0, {"image": ["all"], "text": ["all"]}),
    ],
)
def test_the_card_names_the_parts_that_learned(finetune, text_layers, expected):
    """The demo's partial run keeps the text tower frozen: its card must not claim trained text layers."""
    from mmcore.register import trained_parts

    sets = [f"train.finetune={finetune}", "train.trainable_blocks=2", f"train.trainable_text_layers={text_layers}"]
    cfg = load_config("tiny", sets=sets, env={})
    assert trained_parts(cfg) == expected
