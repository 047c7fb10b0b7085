"""Which torch device the model runs on: `runtime.device` (auto | cpu | cuda | cuda:N) resolved with clear errors;
and this process's place in a torchrun job."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(setting: str = "auto") -> torch.device:
    """`auto` is CUDA when present else CPU; `cpu`, `cuda` and `cuda:N` are honoured or refused with a reason."""
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(value)
    if match is None:
        raise ValueError(f"unknown device {setting!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {setting!r} asked for CUDA, but torch sees no CUDA device on this machine "
            '(set runtime.device = "auto" or "cpu", or MMDERM_DEVICE=cpu)'
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(f"device {setting!r}: this machine has {count} CUDA device(s), numbered 0..{count - 1}")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_setting: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun job when there is one (NCCL on CUDA, else gloo); the device this rank works on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), resolve_device(device_setting)
    ddp = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_setting)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ddp, device
