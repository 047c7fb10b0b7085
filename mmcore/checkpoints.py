"""Checkpoints of a training run: the files of a run directory, where the loop is (`LoopState`), written atomically
and read back with `torch.load(weights_only=True)`; the best epoch's weights as safetensors; every rank's RNG for an
exact resume.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmcore.config import Config, config_to_dict
from mmcore.devices import Dist

# The files of a run directory.
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.safetensors"
CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"  # one line per epoch: what the admin page plots
STEPS_FILE = "steps.jsonl"  # one line per optimizer step
SUMMARY_FILE = "summary.json"


class CheckpointError(ValueError):
    """There is no checkpoint to resume from, or it cannot be used; the message says why."""


@dataclass
class LoopState:
    """Where the loop is: what a checkpoint must carry to continue exactly."""

    epoch: int = 0  # the epoch in progress (or the next to start)
    batch: int = 0  # batches of `epoch` already done
    step: int = 0  # optimizer steps done in all
    sums: dict[str, float] = field(default_factory=dict)  # loss terms summed over this epoch's batches
    best_score: float = -math.inf  # validation balanced accuracy (fused) of the best epoch so far
    best_epoch: int = 0


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: LoopState,
    cfg: Config,
    ddp: Dist,
    device: torch.device,
) -> None:
    """Write the checkpoint atomically (temp file, then os.replace); every rank calls it, rank 0 writes.

    Content loads with torch.load(weights_only=True): tensors, numbers, strings, lists and dicts only.
    """
    rng = [_rng_state(device)]
    if ddp.world_size > 1:
        rng = [None] * ddp.world_size
        dist.all_gather_object(rng, _rng_state(device))  # each rank resumes with its own RNG
    if not ddp.main:
        return
    checkpoint = {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": dataclasses.asdict(state),
        "rng": rng,
        "config": config_to_dict(cfg),
        "world_size": ddp.world_size,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint (never unpickles anything but tensors and plain data)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(
    checkpoint: dict[str, Any],
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ddp: Dist,
    device: torch.device,
) -> LoopState:
    """Load weights, optimizer, scaler and this rank's RNG from a checkpoint; returns where the loop was."""
    module.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"][min(ddp.rank, len(checkpoint["rng"]) - 1)]
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return LoopState(**checkpoint["state"])


def save_best(module: nn.Module, path: Path) -> None:
    """The best epoch's weights as safetensors, atomically."""
    from mmcore.model_store import save_weights

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_weights(module, tmp)
    os.replace(tmp, path)


def remove_stale_temp_files(run_dir: Path) -> None:
    """A run killed while writing leaves its half-written temp file; the checkpoint itself is whole."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
