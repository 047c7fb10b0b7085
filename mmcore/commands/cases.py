"""`cases`: counts of the case store's cases by source, diagnosis, domain and split, and of notes per strategy."""

from __future__ import annotations

import argparse

from mmcore.cases import CaseStore
from mmcore.commands import emit
from mmcore.config import Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments of its own."""


def run(args: argparse.Namespace, cfg: Config) -> int:
    with CaseStore(cfg.home) as store:
        counts = store.counts()
        notes = store.note_strategies()
        total = store.count()
    lines = [f"{total} cases in {cfg.home}"]
    for field_name, table in counts.items():
        lines.append(f"  by {field_name}: " + (", ".join(f"{k} {v}" for k, v in table.items()) or "-"))
    lines.append("  notes: " + (", ".join(f"{k} {v}" for k, v in notes.items()) or "-"))
    emit(args, {"total": total, **counts, "notes": notes}, "\n".join(lines))
    return 0
