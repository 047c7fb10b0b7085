"""Partial fine-tuning: which blocks train and which stay bit-identical, exact resume mid-epoch (outlier draws
included), the outlier-exposure term, and a partially fine-tuned tiny model's Grad-CAM finding the drawn square."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore.cases import DX_CLASSES
from mmcore.checkpoints import CHECKPOINT_FILE, STEPS_FILE, load_checkpoint
from mmcore.config import ConfigError, load_config
from mmcore.datasets import FeatureCache, image_tower_key
from mmcore.explain_image import attribute_image
from mmcore.explain_quality import pointing_game
from mmcore.model import build_model
from mmcore.model_store import load_version, read_card
from mmcore.partial import outlier_exposure_loss, partial_split
from mmcore.train import run_training

sys.path.insert(0, str(Path(__file__).parent))
from explain_toys import striped_squares, toy_model  # noqa: E402

ONE = "runtime.threads=1"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (runs set runtime.threads=1)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(home: Path, *sets: str):
    cfg = dataclasses.replace(load_config("tiny", env={}), home=home)
    return cfg.replace(**dict(s.split("=", 1) for s in (ONE, *sets)))


def _partial(home: Path, *sets: str):
    return _cfg(home, "train.finetune=partial", "train.trainable_blocks=1", "train.augment=true", *sets)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_partial_split_reads_the_config_and_rejects_negative_counts():
    cfg = load_config("tiny", env={})
    assert partial_split(cfg) == (cfg.train.trainable_blocks, 0)  # the text tower stays frozen by default
    assert partial_split(cfg.replace(**{"train.trainable_blocks": "1", "train.trainable_text_layers": "2"})) == (1, 2)
    with pytest.raises(ConfigError, match="trainable_text_layers"):
        cfg.replace(**{"train.trainable_text_layers": "-1"})
    with pytest.raises(ConfigError, match="outlier_exposure"):
        cfg.replace(**{"loss.outlier_exposure": "-0.5"})


def test_outlier_exposure_loss_is_zero_when_uniform_and_grows_with_confidence():
    uniform = torch.zeros(4, 7)
    assert outlier_exposure_loss(uniform).item() == pytest.approx(0.0, abs=1e-6)
    sure = torch.tensor([[10.0, 0, 0, 0, 0, 0, 0]])
    less = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0]])
    assert outlier_exposure_loss(sure) > outlier_exposure_loss(less) > 0
    # KL(uniform || p) by hand for the `less` row
    p = torch.softmax(less, -1)[0]
    assert outlier_exposure_loss(less).item() == pytest.approx(float((-torch.log(p * 7)).mean()), rel=1e-5)
    assert math.isfinite(outlier_exposure_loss(torch.full((2, 7), 1e4)).item())


def _partial(home: Path, *sets: str):
    return _cfg(home, "train.finetune=partial", "train.trainable_blocks=1", "train.augment=true", *sets)


def test_partial_fine_tuning_trains_the_tops_and_leaves_the_trunks_bit_identical(synth_home):
    cfg = _partial(
        synth_home, "train.epochs=2", "train.lr=3e-3", "train.augment_views=2", "train.trainable_text_layers=1"
    )  # one text layer trains too
    result = run_training(cfg, synth_home / "runs" / "partial")
    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg.model, DX_CLASSES).state_dict()
    trained = load_version(cfg, result.version, device="cpu").model.state_dict()
    frozen = ("image_encoder.conv1.", "image_encoder.bn1.", "image_encoder.conv2.", "image_encoder.bn2.")
    frozen += ("text_encoder.model.embeddings.", "text_encoder.model.encoder.layer.0.")
    learned = ("image_encoder.conv3.", "image_encoder.bn3.", "text_encoder.model.encoder.layer.1.", "heads.")
    for name, tensor in initial.items():
        if name.startswith(frozen):
            assert torch.equal(tensor, trained[name]), name  # weights and BatchNorm statistics alike
    for prefix in learned:
        assert any(not torch.equal(t, trained[n]) for n, t in initial.items() if n.startswith(prefix)), prefix
    checkpoint = load_checkpoint(result.run_dir / CHECKPOINT_FILE)
    assert {k.split(".")[0] for k in checkpoint["model"]} == {"image_top", "text_top", "heads"}  # only what learns
    assert read_card(cfg, result.version).training.finetune == "partial"
    cache = json.loads((result.run_dir / "activation_cache.json").read_text())
    assert cache["image_train"]["views"] == 3 and cache["image_train"]["bytes"] > 0
    # Trained towers' features of the training cases were filled in from the cached clean views.
    model = load_version(cfg, result.version, device="cpu").model
    feature_cache = FeatureCache(synth_home / "cache" / "features", image_tower_key(model))
    assert len(list(feature_cache.dir.rglob("*.npy"))) >= cache["image_train"]["computed"]


def test_partial_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(synth_home, monkeypatch):
    from mmcore import train

    # Dropout, augmented views and outlier draws on: the restored RNG and sampler state must all resume exactly.
    sets = ("model.dropout=0.2", "train.lr=3e-3", "train.augment_views=2", "loss.outlier_exposure=0.5")
    straight = run_training(_partial(synth_home, "train.epochs=2", *sets), synth_home / "runs" / "straight")
    steps = iter(range(1000))
    monkeypatch.setattr(train._StopFlag, "agreed", lambda self, ddp, device: next(steps) == 2)  # after step 3 of 6
    part = synth_home / "runs" / "part"
    stopped = run_training(_partial(synth_home, "train.epochs=2", *sets), part)
    assert stopped.stopped and stopped.state.epoch == 0 and stopped.state.batch == 3
    monkeypatch.setattr(train._StopFlag, "agreed", lambda self, ddp, device: False)
    run_training(_cfg(synth_home), part, resume=True, sets=[ONE])
    a, b = load_checkpoint(straight.run_dir / CHECKPOINT_FILE), load_checkpoint(part / CHECKPOINT_FILE)
    assert a["state"] == b["state"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert [s["total"] for s in _lines(straight.run_dir / STEPS_FILE)] == [
        s["total"] for s in _lines(part / STEPS_FILE)
    ]
    assert "outlier" in _lines(part / STEPS_FILE)[0]


def test_gradcam_of_a_partially_fine_tuned_tiny_model_points_at_the_drawn_square():
    """Only the last block and the heads learn, on cached activations of a random frozen trunk; Grad-CAM on the
    whole model must then find the striped square whose stripes give the class."""
    torch.set_num_threads(1)
    model = toy_model(0)
    image_trunk, _, partial = model.split_towers(1, 0)
    model.train()
    optimizer = torch.optim.Adam([p for p in partial.parameters() if p.requires_grad], lr=1e-2)
    for step in range(40):
        images, _, labels = striped_squares(24, step)
        with torch.no_grad():
            acts = image_trunk(images)  # (B, 16, 16, 16): what the activation cache would hold
        loss = torch.nn.functional.cross_entropy(partial(image_acts=acts).image_logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, masks, labels = striped_squares(16, 10_000)
    with torch.no_grad():
        assert (model(images=images).image_logits.argmax(-1) == labels).float().mean() >= 0.9
    maps = attribute_image(model, images, "gradcam", labels.tolist()).numpy()
    hits = [pointing_game(m, mask.numpy()) for m, mask in zip(maps, masks, strict=True)]
    assert np.mean(hits) >= 0.8  # chance is the square's area, 6%
