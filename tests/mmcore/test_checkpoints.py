"""Checkpoints: an atomic write that loads with weights_only, a restore that continues the RNG exactly, the best
weights as safetensors, and stale temp files of a killed writer removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcore.checkpoints import (
    CheckpointError,
    LoopState,
    load_checkpoint,
    remove_stale_temp_files,
    restore,
    save_best,
    save_checkpoint,
)
from mmcore.config import load_config
from mmcore.devices import Dist


def test_a_checkpoint_round_trips_and_the_rng_continues_exactly(tmp_path):
    torch.manual_seed(0)
    net, cpu = nn.Linear(4, 2), torch.device("cpu")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = LoopState(epoch=2, batch=5, step=17, sums={"total": 3.5}, best_score=0.7, best_epoch=2)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, net, optimizer, scaler, state, load_config("tiny", env={}), Dist(), cpu)
    expected_draw = torch.rand(3)  # what the run would draw next
    assert not list(tmp_path.glob(".*.tmp"))  # written aside, then renamed
    fresh = nn.Linear(4, 2)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    again = restore(load_checkpoint(path), fresh, fresh_optimizer, scaler, Dist(), cpu)
    assert again == state and torch.equal(fresh.weight, net.weight)
    assert torch.equal(torch.rand(3), expected_draw)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_missing_checkpoint_best_weights_and_stale_temp_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    save_best(nn.Linear(2, 2), tmp_path / "best.safetensors")
    assert (tmp_path / "best.safetensors").stat().st_size > 0
    (tmp_path / ".checkpoint.pt.123.tmp").write_bytes(b"half")
    remove_stale_temp_files(tmp_path)
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "best.safetensors").exists()
