"""`index build|rebuild|query`: fill a version's case index from the case store (embedding what is missing first),
or query it by an image, a note or a stored case's vector (`case:CASE_ID`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcore.cases import CaseStore
from mmcore.commands import CliError, emit
from mmcore.commands.embed import embed_version
from mmcore.config import Config
from mmcore.index import MODALITIES, UNRANKED, CaseIndex, IndexLockedError, IndexNotBuiltError
from mmcore.model_store import active_version


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "query", "rebuild"])
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--text", help="query: a clinical note")
    p.add_argument("--image", help="query: an image file")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--modality", choices=list(MODALITIES), default="image", help="query: which collection")
    p.add_argument("--where", help='query: JSON metadata filter, e.g. {"dx": "mel"}')
    p.add_argument(
        "--findings",
        help='query: images the model reads these findings in, comma-separated, e.g. "blue-white veil, streaks"',
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    version = args.model or active_version(cfg)
    if not version:
        raise CliError("no active model: pass --model VERSION or promote one (python -m mmcore models promote V)")
    try:
        where = json.loads(args.where) if args.where else None
    except json.JSONDecodeError as e:
        raise CliError(f"--where is not JSON ({e})") from None
    if where is not None and not isinstance(where, dict):
        raise CliError('--where must be a JSON object, e.g. {"dx": ["mel", "bcc"]}')
    if args.action == "query" and args.findings is not None:
        _finding_names(args)
    embedded = None
    if args.action != "query":
        embedded = embed_version(cfg, version, force=args.action == "rebuild", quiet=args.json)
    try:
        with CaseIndex.from_config(cfg) as index:
            if args.action == "query":
                return _query(args, cfg, index, version, where)
            fill = index.rebuild if args.action == "rebuild" else index.build
            with (
                CaseStore(cfg.home) as store,
                tqdm(desc=f"index {args.action}", unit="case", disable=True if args.json else None) as bar,
            ):
                counts = fill(version, store, progress=bar.update)
    except (IndexLockedError, IndexNotBuiltError, ValueError, ConnectionError) as e:
        raise CliError(str(e).splitlines()[0]) from None
    if not any(counts.values()):
        raise CliError(f"nothing to index for model {version!r}: the case store has no case with an image or a note")
    payload = {
        "action": args.action,
        "model": version,
        "location": index.location,
        "counts": counts,
        "cases": embedded.cases,
        "without_note": embedded.without_note,
    }
    text = (
        f"{args.action}: model {version}, {embedded.cases} cases: "
        + ", ".join(f"{m} {n}" for m, n in counts.items())
        + f" ({embedded.without_note} without a note)"
    )
    emit(args, payload, text)
    return 0


def _query(args: argparse.Namespace, cfg: Config, index: CaseIndex, version: str, where: dict | None) -> int:
    vectors = _query_vectors(args, cfg, index, version)
    hits = index.query(
        version,
        image=vectors.get("image"),
        text=vectors.get("text"),
        modality=args.modality,
        k=args.k,
        where=where,
        query_kind=UNRANKED if args.findings is not None else None,  # a findings direction: no library percentile
    )
    lines = [f"{len(hits)} similar cases (model {version}, {args.modality} index):"]
    for rank, h in enumerate(hits, 1):
        m = h.metadata
        lines.append(f"{rank:3d}. {h.case_id}  score {h.score:.4f}  {m['dx']}  {m['site']}  age {m['age']}  {m['sex']}")
    emit(args, {"model": version, "modality": args.modality, "hits": [asdict(h) for h in hits]}, "\n".join(lines))
    return 0


def _query_vectors(args: argparse.Namespace, cfg: Config, index: CaseIndex, version: str) -> dict[str, np.ndarray]:
    """--image FILE / --text NOTE embedded by the model, `case:CASE_ID` in either for a stored case's vector, or
    --findings: the chosen findings' direction in the image space (explain_findings.findings_query_vector)."""
    if args.findings is not None:
        return {"image": _findings_vector(args, cfg, version)}
    if not args.image and not args.text:
        raise CliError(
            "query needs --image FILE, --text NOTE, case:CASE_ID in either (a stored case's vector), or --findings"
        )
    vectors: dict[str, np.ndarray] = {}
    to_embed: dict[str, str] = {}
    for modality, value in (("image", args.image), ("text", args.text)):
        if value and value.startswith("case:"):
            case_id = value.removeprefix("case:")
            vector = index.vector(version, modality, case_id)
            if vector is None:
                raise CliError(f"case {case_id!r} is not in the {modality} index of model {version}")
            vectors[modality] = vector
        elif value:
            to_embed[modality] = value
    return vectors | (_embed(cfg, version, to_embed) if to_embed else {})


def _findings_vector(args: argparse.Namespace, cfg: Config, version: str) -> np.ndarray:
    from mmcore.explain_findings import findings_query_vector
    from mmcore.predictor import Predictor

    names = _finding_names(args)
    return np.asarray(findings_query_vector(Predictor.from_config(cfg, version), names), dtype=np.float32)


def _finding_names(args: argparse.Namespace) -> list[str]:
    """--findings as vocabulary names, checked before anything is opened."""
    from mmcore.concepts import FINDING_NAMES

    names = [name.strip() for name in args.findings.split(",") if name.strip()]
    unknown = [name for name in names if name not in FINDING_NAMES]
    if not names or unknown:
        raise CliError(
            f"unknown finding {', '.join(map(repr, unknown)) or '(none given)'}: choose from {', '.join(FINDING_NAMES)}"
        )
    if args.image or args.text or args.modality != "image":
        raise CliError("--findings searches the image index alone: drop --image, --text and --modality text")
    return names


def _embed(cfg: Config, version: str, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    from mmcore.images import ImageRejected
    from mmcore.predictor import Predictor

    image_bytes = None
    if "image" in inputs:
        path = Path(inputs["image"])
        if not path.is_file():
            raise CliError(f"{path}: no such file")
        image_bytes = path.read_bytes()
    try:
        embeds = Predictor.from_config(cfg, version).embed(image_bytes=image_bytes, note=inputs.get("text"))
    except ImageRejected as e:
        raise CliError(f"{inputs['image']}: {e}") from None
    return {m: np.asarray(embeds[m], dtype=np.float32) for m in inputs}
