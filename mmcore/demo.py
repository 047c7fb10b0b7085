"""`python -m mmcore demo`: an empty data home to a working app: SynthDerm, the demo model on cached frozen features,
its test evaluation, every case embedded and indexed, promotion (idempotent). `promote_version` (index first, then
active) is also what the Admin page calls.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mmcore.cases import CaseStore
from mmcore.config import Config

if TYPE_CHECKING:
    from mmcore.model_store import LoadedModel

STAGES = 4


def _stage(i: int, message: str) -> None:
    print(f"[demo {i}/{STAGES}] {message}", file=sys.stderr, flush=True)


def ensure_synthderm(cfg: Config, n: int) -> dict[str, Any]:
    """SynthDerm into the case store unless it already holds cases; missing notes of the needed strategies added."""
    from mmcore.notes import generate_notes
    from mmcore.synthderm import cli_synth

    with CaseStore(cfg.home) as store:
        existing = store.count()
    if not existing:
        ns = argparse.Namespace(
            n=n,
            seed=cfg.data.synth_seed,
            domains=",".join(cfg.data.synth_domains),
            balanced=cfg.data.synth_balanced,
            size=max(32, cfg.model.image_size),
            json=False,
        )
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only our own result
            cli_synth(ns, cfg)
    needed = dict.fromkeys((*cfg.train.note_strategies, "clinical", cfg.index.text_strategy))
    with CaseStore(cfg.home) as store:
        total = store.count()
        have = store.note_strategies()
        for strategy in needed:
            if have.get(strategy, 0) < total:
                generate_notes(store, strategy, seed=cfg.data.synth_seed)
        counts = store.counts()
    return {"cases": total, "generated": not existing, **counts}


def embed_all(cfg: Config, loaded: LoadedModel) -> int:
    """Embed every case that has a cfg.index.text_strategy note (image and note) and store the vectors.

    Skipped when the store already holds this version's vectors for exactly those cases.
    """
    from mmcore.evaluate import embed_cases

    version, strategy = loaded.version, cfg.index.text_strategy
    with CaseStore(cfg.home) as store:
        cases = [c for c in store.cases(with_notes=True) if c.notes.get(strategy)]
        wanted = [c.case_id for c in cases]
        if all(store.get_embeddings(version, m)[0] == sorted(wanted) for m in ("image", "text")):
            return len(wanted)
        frozen = bool(loaded.metadata.get("training", {}).get("freeze_backbones"))
        device = next(loaded.model.parameters()).device
        cache_dir = cfg.cache_dir if frozen else None  # frozen pretrained towers: their features are cached
        ids, image_vecs, text_vecs = embed_cases(loaded.model, store, cases, strategy, device, cache_dir=cache_dir)
        store.put_embeddings(version, "image", ids, image_vecs)
        store.put_embeddings(version, "text", ids, text_vecs)
    return len(ids)


def promote_version(
    cfg: Config,
    version: str,
    progress: Callable[[float, str], None] | None = None,
    loaded: LoadedModel | None = None,
    require_index: bool = True,
) -> dict[str, int]:
    """Make `version` active after its case index is built: embed every case (unless stored), fill the index.

    progress(fraction, text) is called as the work goes on. With require_index=False a locked index (another
    process owns it) is a warning and the version is promoted anyway; the vectors wait in the case store.
    """
    from mmcore.index import IndexLockedError, get_index
    from mmcore.model_store import load_version, set_active

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, text)

    report(0.0, f"loading {version}")
    loaded = loaded or load_version(cfg, version)
    report(0.1, "embedding every case")
    embedded = embed_all(cfg, loaded)
    report(0.6, "building the case index")
    done = 0

    def indexed(n: int) -> None:
        nonlocal done
        done += n
        report(0.6 + 0.35 * min(1.0, done / max(2 * embedded, 1)), f"indexed {done} of {2 * embedded} vectors")

    counts: dict[str, int] = {}
    try:
        with CaseStore(cfg.home) as store:
            counts = get_index(cfg).build(version, store, progress=indexed)
    except IndexLockedError as e:
        if require_index:
            raise
        print(f"warning: {e}; build it later with `python -m mmcore index build`", file=sys.stderr)
    set_active(cfg, version)
    report(1.0, f"{version} is active")
    return {"embedded": embedded, **{f"indexed_{m}": n for m, n in counts.items()}}


def build_demo(cfg: Config, n: int = 0) -> dict[str, Any]:
    """Every stage of the demo on cfg.home; returns what was built and the test metrics."""
    from mmcore.audit import AuditLog
    from mmcore.evaluate import run_evaluation
    from mmcore.model_store import load_version
    from mmcore.train import run_training

    started = time.perf_counter()
    n = n or cfg.data.synth_n
    _stage(1, f"SynthDerm: {n} cases in {', '.join(cfg.data.synth_domains)} with notes -> {cfg.home}")
    data = ensure_synthderm(cfg, n)
    if not data["generated"]:
        print(f"  the case store already holds {data['cases']} cases: using them", file=sys.stderr)
    _stage(
        2,
        f"training the demo model ({cfg.model.image_encoder} + {cfg.model.text_encoder}, "
        f"{'frozen backbones' if cfg.train.freeze_backbones else 'full fine-tune'}, {cfg.train.epochs} epochs)",
    )
    run_dir = cfg.home / "runs" / f"demo-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    trained = run_training(cfg, run_dir)
    if trained.stopped:  # SIGTERM: the checkpoint is saved; a new demo run trains again from the start
        return {"status": "stopped", "run_dir": str(run_dir)}
    version = trained.version
    _stage(3, f"evaluating {version} on the test split with clinical notes")
    loaded = load_version(cfg, version)
    result = run_evaluation(cfg, version, "test", "clinical", loaded=loaded)
    _stage(4, f"embedding every case ({cfg.index.text_strategy} notes), building the case index, promoting")
    indexed = promote_version(cfg, version, loaded=loaded, require_index=False)
    AuditLog(cfg.audit_path).append("promote", version=version, by="demo")
    test = {
        m: {k: result["classification"][m][k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
        for m in ("fused", "image", "text")
    }
    return {
        "status": "built",
        "version": version,
        "run_dir": str(run_dir),
        "cases": data["cases"],
        "test": {"n": result["n"], **test, **result["baselines"]},
        "retrieval_mAP": {k: v["mAP"] for k, v in result["retrieval"].items()},
        **indexed,
        "seconds": round(time.perf_counter() - started, 1),
    }


def cli_demo(args: argparse.Namespace, cfg: Config) -> int:
    """`demo [--n N] [--json]`: build the demo in MMDERM_HOME; nothing to do when a model is already active.

    Without --config (or MMDERM_CONFIG) it uses the `demo` preset: frozen default encoders, heads on cached features.
    """
    from mmcore.cli import emit
    from mmcore.config import load_config
    from mmcore.model_store import active_version

    if args.config is None and not os.environ.get("MMDERM_CONFIG"):
        cfg = load_config("demo", args.sets)  # the demo's own preset unless another is named
    active = active_version(cfg)
    if active:
        emit(
            args,
            {"status": "exists", "version": active, "home": str(cfg.home)},
            f"demo already built in {cfg.home}: active model {active}; nothing to do "
            "(an empty MMDERM_HOME builds it again)",
        )
        return 0
    out = build_demo(cfg, args.n)
    if out["status"] == "stopped":
        from mmcore.train import EXIT_STOPPED

        return EXIT_STOPPED
    t = out["test"]
    lines = [
        f"demo built in {out['seconds']:.0f} s: {out['cases']} cases, active model {out['version']}",
        f"  test ({t['n']} cases, clinical notes):",
    ]
    for m in ("fused", "image", "text"):
        lines.append(
            f"    {m:<6} accuracy {t[m]['accuracy']:.3f}  balanced accuracy {t[m]['balanced_accuracy']:.3f}"
            f"  macro-F1 {t[m]['macro_f1']:.3f}"
        )
    lines.append(f"    chance {t['chance']:.3f}, majority class ({t['majority_class']}) {t['majority_rate']:.3f}")
    emit(args, out, "\n".join(lines))
    return 0
