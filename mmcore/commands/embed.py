"""`embed [--model V] [--force]`: store every case's image and best-note vectors for a version (resumable: only new
or changed inputs are embedded); `index build` then fills the case index from them."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from mmcore.cases import CaseStore
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.embeddings import EmbedReport, embed_cases
from mmcore.model_store import ModelStoreError, active_version, load_version


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--force", action="store_true", help="embed everything again")


def run(args: argparse.Namespace, cfg: Config) -> int:
    version = args.model or active_version(cfg)
    if not version:
        raise CliError("no active model: pass --model VERSION (see `python -m mmcore models list`)")
    report = embed_version(cfg, version, force=args.force, quiet=args.json)
    emit(args, report_payload(version, report), report_text(version, report))
    return 0


def embed_version(cfg: Config, version: str, force: bool = False, quiet: bool = False) -> EmbedReport:
    """Embed every case with `version`, with a progress bar on a terminal."""
    try:
        loaded = load_version(cfg, version)
    except ModelStoreError as e:
        raise CliError(str(e)) from None
    cache = cfg.cache_dir if loaded.card.training.finetune == "heads" else None
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {postfix}"  # the time left is mmcore's, as the Admin page shows it
    with (
        CaseStore(cfg.home) as store,
        tqdm(total=100, desc="embed", bar_format=bar_format, file=sys.stderr, disable=True if quiet else None) as bar,
    ):

        def progress(fraction: float, text: str, **counts: object) -> None:  # the counts are in the text too
            bar.set_postfix_str(text, refresh=False)
            bar.update(round(100 * fraction) - bar.n)

        return embed_cases(
            loaded.model,
            store,
            version,
            cfg.index.note_preference,
            cache_dir=cache,
            force=force,
            num_workers=cfg.train.num_workers,
            progress=progress,
        )


def report_payload(version: str, r: EmbedReport) -> dict:
    return {
        "model": version,
        "cases": r.cases,
        "image": r.image,
        "text": r.text,
        "embedded_now": r.embedded,
        "without_note": r.without_note,
        "without_image": r.without_image,
        "notes_by_strategy": r.notes_by_strategy,
        "seconds": r.seconds,
    }


def report_text(version: str, r: EmbedReport) -> str:
    notes = ", ".join(f"{k} {v}" for k, v in r.notes_by_strategy.items()) or "none"
    return (
        f"model {version}: {r.image} of {r.cases} cases embedded by image, {r.text} by note ({notes}); "
        f"{r.without_note} without a note; computed now: image {r.embedded['image']}, text {r.embedded['text']}"
    )
