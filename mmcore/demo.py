"""The demo: an empty data home to a working app. SynthDerm cases with notes, the demo model trained, calibrated,
given its out-of-distribution gate and evaluated on its test split, then promoted (every case embedded and indexed).
Idempotent: a home that already has an active model is left as it is.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from mmcore.cases import CaseStore
from mmcore.config import Config

STAGES = 4


def _stage(i: int, message: str) -> None:
    print(f"[demo {i}/{STAGES}] {message}", file=sys.stderr, flush=True)


def ensure_synthderm(cfg: Config, n: int) -> dict[str, Any]:
    """SynthDerm into the case store unless it already holds cases; missing notes of the needed strategies added."""
    from mmcore.notes import generate_notes
    from mmcore.synthderm import generate_into

    with CaseStore(cfg.home) as store:
        generated = store.count() == 0
        if generated:
            d = cfg.data
            generate_into(
                store,
                n,
                d.synth_seed,
                d.synth_domains,
                max(32, cfg.model.image_size),
                d.synth_balanced,
                d.split_fractions,
            )
        needed = dict.fromkeys((*cfg.train.note_strategies, "clinical", *cfg.index.note_preference[:1]))
        total = store.count()
        have = store.note_strategies()
        for strategy in needed:
            if have.get(strategy, 0) < total:
                generate_notes(store, strategy, seed=cfg.data.synth_seed)
        counts = store.counts()
    return {"cases": total, "generated": generated, **counts}


def build_demo(cfg: Config, n: int = 0) -> dict[str, Any]:
    """Every stage of the demo on cfg.home; returns what was built and the test metrics."""
    from mmcore.model_store import promote, read_card
    from mmcore.train import run_training

    started = time.perf_counter()
    n = n or cfg.data.synth_n
    _stage(1, f"SynthDerm: {n} cases in {', '.join(cfg.data.synth_domains)} with notes -> {cfg.home}")
    data = ensure_synthderm(cfg, n)
    if not data["generated"]:
        print(f"  the case store already holds {data['cases']} cases: using them", file=sys.stderr)
    t = cfg.train
    _stage(
        2,
        f"training the demo model ({cfg.model.image_encoder} + {cfg.model.text_encoder}, {t.finetune} "
        f"fine-tuning, {t.epochs} epochs), then calibrating, fitting its OOD gate and evaluating it",
    )
    run_dir = cfg.home / "runs" / f"demo-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    trained = run_training(cfg, run_dir)
    if trained.stopped:  # SIGTERM: the checkpoint is saved; a new demo run trains again from the start
        return {"status": "stopped", "run_dir": str(run_dir)}
    version = trained.version
    _stage(3, f"{version} is evaluated; embedding every case, building the case index")
    result = promote(cfg, version, "demo")
    _stage(4, f"{version} is active")
    card = read_card(cfg, version)
    head = card.headline
    test: dict[str, Any] = {}
    if head is not None:
        test = {"n": head.n, "strategy": head.text_strategy}
        for m, s in head.modalities.items():
            test[m] = {
                "accuracy": s.accuracy,
                "balanced_accuracy": s.balanced_accuracy,
                "macro_f1": s.macro_f1,
                "ece": s.ece,
                "ece_uncalibrated": s.ece_uncalibrated,
            }
    return {
        "status": "built",
        "version": version,
        "run_dir": str(run_dir),
        "cases": data["cases"],
        "trained_on": card.trained_on,
        "test": test,
        "retrieval_mAP": dict(head.retrieval_map) if head else {},
        "indexed": result.indexed,
        "seconds": round(time.perf_counter() - started, 1),
    }
