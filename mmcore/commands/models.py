"""`models list|show|promote|rollback|verify [VERSION]`: the model versions, their cards, the one promotion path
(embed every case, build the index, activate, audit) and hash verification."""

from __future__ import annotations

import argparse
import sys

from mmcore.audit import AuditLog, acting_user
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.model_store import (
    ModelStoreError,
    TamperedModelError,
    active_version,
    list_versions,
    promote,
    read_card,
    verify_version,
)
from mmcore.register import card_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "promote", "rollback", "verify", "fit-ood"])
    p.add_argument("version", nargs="?", help="rollback: default the version active before the current one")
    p.add_argument(
        "--allow-unevaluated", action="store_true", help="promote a version with no test evaluation (audited)"
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.action == "list":
            return _list(args, cfg)
        if args.action == "show":
            version = args.version or active_version(cfg)
            if version is None:
                raise CliError("no active model; name a version (see `python -m mmcore models list`)")
            card = read_card(cfg, version)
            emit(args, card.to_dict(), card_text(card, active=version == active_version(cfg)))
            return 0
        if args.action in ("promote", "rollback"):
            return _promote(args, cfg)
        if args.action == "fit-ood":
            return _fit_ood(args, cfg)
        return _verify(args, cfg)
    except ModelStoreError as e:
        raise CliError(str(e)) from None


def _promote(args: argparse.Namespace, cfg: Config) -> int:
    version = args.version
    if args.action == "rollback" and not version:
        version = _previous(cfg)
    if not version:
        raise CliError(f"{args.action} needs a version (see `python -m mmcore models list`)")
    result = promote(cfg, version, acting_user(), progress=_progress, allow_unevaluated=args.allow_unevaluated)
    e = result.embedded
    payload = {
        "active": version,
        "previous": result.previous,
        "indexed": result.indexed,
        "cases": e.cases,
        "without_note": e.without_note,
        "embedded_now": e.embedded,
        "seconds": result.seconds,
    }
    emit(
        args,
        payload,
        f"active model: {version} (was {result.previous or 'none'}); indexed {result.indexed.get('image', 0)} "
        f"images and {result.indexed.get('text', 0)} notes of {e.cases} cases ({e.without_note} without a note)",
    )
    return 0


def _fit_ood(args: argparse.Namespace, cfg: Config) -> int:
    """Refit the OOD scorer and the calibration of an existing version (its files rehashed, its card updated)."""
    from mmcore.model_store import load_version
    from mmcore.register import fit_trust

    version = args.version or active_version(cfg)
    if not version:
        raise CliError("fit-ood needs a version (see `python -m mmcore models list`)")
    try:
        card = fit_trust(cfg, load_version(cfg, version))
    except ValueError as e:
        raise CliError(str(e)) from None
    AuditLog(cfg.audit_path).append("fit_ood", acting_user(), model_version=version)
    thresholds = ", ".join(f"{m} {v['threshold']:.3f}" for m, v in card.ood.items())
    temps = ", ".join(f"{m} {t:.2f}" for m, t in card.calibration.get("temperatures", {}).items())
    emit(
        args,
        {"model": version, "ood": card.ood, "calibration": card.calibration},
        f"{version}: OOD thresholds {thresholds}; temperatures {temps or 'none'}",
    )
    return 0


def _progress(fraction: float, text: str, **counts: object) -> None:  # the stage's counts are in the text too
    print(f"  {fraction:4.0%} {text}", file=sys.stderr, flush=True)


def _previous(cfg: Config) -> str | None:
    """The version that was active before the current one, from the audit log's last promotion."""
    active = active_version(cfg)
    for entry in reversed(AuditLog(cfg.audit_path).read(event="promote")):
        if entry.get("model_version") == active and entry.get("previous"):
            return entry["previous"]
    return None


def _list(args: argparse.Namespace, cfg: Config) -> int:
    active = active_version(cfg)
    rows = []
    for version in list_versions(cfg):
        try:
            card = read_card(cfg, version)
        except ModelStoreError as e:
            rows.append({"version": version, "active": version == active, "error": str(e)})
            continue
        head = card.headline
        fused = head.modalities.get("fused") if head else None
        rows.append(
            {
                "version": version,
                "active": version == active,
                "created": card.created,
                "image": card.encoders.get("image").name if "image" in card.encoders else "?",
                "text": card.encoders.get("text").name if "text" in card.encoders else "?",
                "finetune": card.training.finetune,
                "evaluated": card.evaluated,
                "balanced_accuracy_fused": fused.balanced_accuracy if fused else None,
            }
        )
    lines = [f"{len(rows)} model version(s) in {cfg.models_dir}"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['version']}  unreadable: {r['error']}")
            continue
        score = r["balanced_accuracy_fused"]
        lines.append(
            f"{'*' if r['active'] else ' '} {r['version']}  image={r['image']} text={r['text']} {r['finetune']}  "
            + (f"test balanced accuracy (fused) {score:.3f}" if score is not None else "not evaluated")
        )
    emit(args, {"active": active, "versions": rows}, "\n".join(lines))
    return 0


def _verify(args: argparse.Namespace, cfg: Config) -> int:
    versions = [args.version] if args.version else list_versions(cfg)
    results = []
    for version in versions:
        try:
            verify_version(cfg, version)
            results.append({"version": version, "ok": True})
        except TamperedModelError as e:
            results.append({"version": version, "ok": False, "reason": str(e)})
    text = (
        "\n".join(f"{r['version']}: ok" if r["ok"] else f"{r['version']}: FAILED: {r['reason']}" for r in results)
        or "no model versions"
    )
    emit(args, {"ok": all(r["ok"] for r in results), "versions": results}, text)
    return 0 if all(r["ok"] for r in results) else 1
