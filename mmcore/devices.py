"""Which torch device the model runs on: `runtime.device` (auto | cpu | cuda | cuda:N) resolved with clear errors."""

from __future__ import annotations

import re

import torch

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
