"""Training on the tiny preset: the loss falls, frozen backbones train on cached features, resume is exact,
SIGTERM leaves a loadable checkpoint, and DDP on two CPU processes matches one process on the first step."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmcore.audit import AuditLog
from mmcore.cases import DX_CLASSES
from mmcore.checkpoints import CHECKPOINT_FILE, METRICS_FILE, STEPS_FILE, load_checkpoint
from mmcore.commands import main
from mmcore.config import REPO_ROOT, load_config
from mmcore.model import build_model
from mmcore.model_store import active_version, list_versions, load_version, read_card
from mmcore.train import EXIT_STOPPED, run_training


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (runs set runtime.threads=1)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(home: Path, *sets: str):
    cfg = dataclasses.replace(load_config("tiny", env={}), home=home)
    return cfg.replace(**dict(s.split("=", 1) for s in ("runtime.threads=1", *sets)))


ONE = "runtime.threads=1"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_training_loss_falls_and_the_run_registers_a_version(synth_home, capsys):
    run_dir = synth_home / "runs" / "a"
    argv = f"train --config tiny --set train.epochs=8 --set train.lr=3e-3 --set {ONE} --promote --json".split()
    code = main([*argv, "--run-dir", str(run_dir)])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["run_dir"] == str(run_dir) and active_version(synth_home) == payload["version"]
    epochs = _lines(run_dir / METRICS_FILE)
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    keys = "step train_loss train_ce_image train_ce_text train_cosine train_l1 train_ntxent val_loss seconds"
    for key in (*keys.split(), "val_accuracy_fused", "val_balanced_accuracy_fused"):
        assert key in epochs[0], key
    assert epochs[-1]["train_loss"] < 0.9 * epochs[0]["train_loss"]
    card = read_card(synth_home, payload["version"])
    train = card.training_data.train
    assert train.n == sum(train.dx.values()) == sum(train.fitzpatrick.values()) == sum(train.site.values())
    assert card.training_data.note_strategies == ["P1"] and card.training.finetune == "full"
    assert card.training.validation["balanced_accuracy_fused"] == payload["metrics"]["balanced_accuracy_fused"]
    best = max(epochs, key=lambda e: e["val_balanced_accuracy_fused"])
    assert card.training.selected_epoch == best["epoch"]
    assert card.evaluated and card.headline.text_strategy == "clinical"  # evaluated on test before any promotion
    audit = AuditLog(synth_home / "audit.jsonl")
    user = audit.read(event="train")[-1]["user"]
    assert audit.read(event="train")[-1]["model_version"] == payload["version"] and user.startswith("os:")
    assert audit.read(event="promote")[-1]["model_version"] == payload["version"]


def test_frozen_backbones_train_only_the_heads_on_cached_features(synth_home):
    cfg = _cfg(synth_home, "train.finetune=heads", "train.epochs=40", "train.lr=1e-2")
    result = run_training(cfg, synth_home / "runs" / "frozen")
    losses = [e["train_loss"] for e in _lines(result.run_dir / METRICS_FILE)]
    assert sum(losses[-5:]) / 5 < 0.92 * sum(losses[:3]) / 3  # noisy epoch to epoch: balanced draws, 6 steps
    assert any((synth_home / "cache" / "features").rglob("*.npy"))
    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg.model, DX_CLASSES)
    trained = load_version(cfg, result.version, device="cpu").model
    for name, tensor in initial.image_encoder.state_dict().items():
        assert torch.equal(tensor, trained.image_encoder.state_dict()[name]), name
    card = read_card(cfg, result.version)
    assert card.training.finetune == "heads" and card.encoders["image"].trained == []
    checkpoint = load_checkpoint(result.run_dir / CHECKPOINT_FILE)
    assert all(
        k.startswith(("image_proj", "text_proj", "shared", "classifier", "fusion", "image_drop", "text_drop"))
        for k in checkpoint["model"]
    )  # only the heads learn, so only they are checkpointed


def test_resume_from_an_epoch_checkpoint_gives_identical_weights(synth_home):
    # Augmentation and dropout on, so the restored RNG state matters.
    sets = ("train.augment=true", "model.dropout=0.2", "train.lr=3e-3")
    straight = run_training(_cfg(synth_home, "train.epochs=3", *sets), synth_home / "runs" / "straight")
    part = synth_home / "runs" / "part"
    run_training(_cfg(synth_home, "train.epochs=1", *sets), part)
    assert load_checkpoint(part / CHECKPOINT_FILE)["state"]["epoch"] == 1
    resumed = run_training(_cfg(synth_home), part, resume=True, sets=["train.epochs=3", ONE])
    a, b = load_checkpoint(straight.run_dir / CHECKPOINT_FILE), load_checkpoint(part / CHECKPOINT_FILE)
    assert a["state"] == b["state"] and b["config"]["train"]["epochs"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert [e["train_loss"] for e in _lines(straight.run_dir / METRICS_FILE)] == [
        e["train_loss"] for e in _lines(part / METRICS_FILE)
    ]
    assert resumed.version != straight.version


@pytest.mark.slow
def test_sigterm_leaves_a_valid_checkpoint_and_resume_finishes(synth_home):
    run_dir = synth_home / "runs" / "term"
    env = {**os.environ, "MMDERM_HOME": str(synth_home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmcore", "train", "--config", "tiny", "--set", "train.epochs=500", "--set", ONE]
    cmd += ["--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        steps = run_dir / STEPS_FILE
        if steps.is_file() and len(steps.read_text().splitlines()) >= 9:  # past the first epoch (6 steps)
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume" in err
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)  # loads without unpickling code
    state = checkpoint["state"]
    assert state["step"] == len(_lines(run_dir / STEPS_FILE)) >= 9
    assert checkpoint["config"]["model"]["image_encoder"] == "tiny_cnn"
    assert not list_versions(synth_home)  # a stopped run registers nothing

    target = state["epoch"] + 2
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--set", f"train.epochs={target}", "--set", ONE]) == 0
    assert [e["epoch"] for e in _lines(run_dir / METRICS_FILE)] == list(range(1, target + 1))
    assert [s["step"] for s in _lines(run_dir / STEPS_FILE)] == list(range(1, 6 * target + 1))
    assert len(list_versions(synth_home)) == 1
    # Stopped mid-epoch and resumed, the weights are those of a run that was never stopped.
    straight = run_training(_cfg(synth_home, f"train.epochs={target}"), synth_home / "runs" / "straight")
    a, b = load_checkpoint(straight.run_dir / CHECKPOINT_FILE), load_checkpoint(run_dir / CHECKPOINT_FILE)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True], ids=["fine-tune", "frozen"])
def test_ddp_on_two_cpu_processes_matches_one_process(synth_home, frozen):
    """torchrun with 2 gloo processes against one process on the same global batches (batch 8 = 2 x 4)."""
    sets = [f"train.finetune={'heads' if frozen else 'full'}", f"train.max_steps={2 if frozen else 1}"]
    ddp_dir, one_dir = synth_home / "runs" / "ddp", synth_home / "runs" / "one"
    env = {**os.environ, "MMDERM_HOME": str(synth_home)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mmcore"]
    cmd += ["train", "--config", "tiny", "--set", sets[0], "--set", sets[1], "--json", "--run-dir", str(ddp_dir)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list_versions(synth_home)) == 1  # only rank 0 registers
    assert len(_lines(ddp_dir / METRICS_FILE)) == 1 and json.loads(proc.stdout.strip().splitlines()[-1])["version"]
    run_training(_cfg(synth_home, *sets), one_dir)
    ddp, one = _lines(ddp_dir / STEPS_FILE), _lines(one_dir / STEPS_FILE)
    assert len(ddp) == len(one) == (2 if frozen else 1)
    if frozen:
        # Frozen towers run in eval mode, so each rank's half batch gives exactly the features one process would:
        # every term of both steps agrees, and step 2 shows the ranks' gradients were combined as one.
        for a, b in zip(ddp, one, strict=True):
            for term in ("total", "ce_image", "ce_text", "cosine", "l1", "ntxent"):
                assert a[term] == pytest.approx(b[term], rel=1e-4, abs=1e-6), (a["step"], term)
    else:
        # Every loss term sees the global batch through the gather, so the text terms agree to float precision.
        # BatchNorm in the image tower normalises each rank's half batch on its own (SyncBatchNorm is CUDA-only),
        # which moves the image terms by a few percent.
        assert ddp[0]["ce_text"] == pytest.approx(one[0]["ce_text"], rel=1e-5)
        assert ddp[0]["total"] == pytest.approx(one[0]["total"], rel=5e-2)


def test_too_few_cases_is_a_clear_error(synth_home, capsys):
    code = main(["train", "--config", "tiny", "--set", "train.batch_size=512", "--run-dir", str(synth_home / "r")])
    assert code == 2
    assert "fewer than one batch of 512" in capsys.readouterr().err
    assert main(["train", "--config", "tiny", "--resume"]) == 2  # --resume needs --run-dir
