"""Devices: `runtime.device` resolved with clear errors, and a process outside torchrun is rank 0 of 1."""

from __future__ import annotations

import pytest
import torch

from mmcore.devices import Dist, init_distributed, resolve_device


def test_auto_and_cpu_resolve_and_bad_settings_say_why(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device("").type == expected
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_outside_torchrun_a_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ddp, device = init_distributed("cpu")
    assert ddp == Dist() and ddp.main and ddp.world_size == 1 and device.type == "cpu"
