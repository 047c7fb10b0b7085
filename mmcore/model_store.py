"""Model versions on disk: save, verify (SHA-256), load, list and promote; `python -m mmcore models ...`.

A version is a folder `models_dir/<version>` that describes itself, like a MONAI bundle: model.safetensors,
config.toml, labels.json, the text tower's tokenizer/architecture files, and metadata.json (the model card, with
the SHA-256 of every other file). Loading never unpickles: weights come from safetensors only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

from mmcore import DISCLAIMER, __version__
from mmcore.config import Config, config_from_toml, save_config
from mmcore.devices import resolve_device
from mmcore.model import MultimodalModel, build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.toml"
LABELS_FILE = "labels.json"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "active"
INTENDED_USE = "Research use only; not for diagnostic purposes."
_VERSION = re.compile(r"^v(\d{4,})-\d{8}T\d{6}Z$")
_RESERVED = ("version", "created", "files")  # written by the store only


class ModelStoreError(Exception):
    """A model version is missing or unusable; the message says which and why."""


class TamperedModelError(ModelStoreError):
    """A version's files do not match the SHA-256 recorded when it was saved."""


@dataclass
class LoadedModel:
    model: MultimodalModel
    cfg: Config
    metadata: dict[str, Any]
    version: str
    path: Path


# --- where ------------------------------------------------------------------------------------------------------


def _models_dir(home_or_cfg: Config | Path | str) -> Path:
    if isinstance(home_or_cfg, Config):
        return home_or_cfg.models_dir
    return Path(home_or_cfg) / "models"


def _home(home_or_cfg: Config | Path | str) -> Path:
    return home_or_cfg.home if isinstance(home_or_cfg, Config) else Path(home_or_cfg)


def version_dir(home_or_cfg: Config | Path | str, version: str) -> Path:
    """The folder of an existing model version (a clear error for a malformed or unknown name)."""
    if not _VERSION.match(version):
        raise ModelStoreError(f"{version!r} is not a model version name (like v0001-20250101T120000Z)")
    folder = _models_dir(home_or_cfg) / version
    if not folder.is_dir():
        known = ", ".join(list_versions(home_or_cfg)) or "none"
        raise ModelStoreError(f"no model version {version!r} in {folder.parent} (versions: {known})")
    return folder


def list_versions(home_or_cfg: Config | Path | str) -> list[str]:
    """The saved versions, oldest first."""
    folder = _models_dir(home_or_cfg)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(names, key=lambda n: int(_VERSION.match(n).group(1)))


def active_version(home_or_cfg: Config | Path | str) -> str | None:
    """The promoted version, or None when none has been promoted."""
    pointer = _models_dir(home_or_cfg) / ACTIVE_FILE
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def set_active(home_or_cfg: Config | Path | str, version: str) -> None:
    """Promote `version` (after verifying its hashes); the pointer file is replaced atomically."""
    verify_version(home_or_cfg, version)
    pointer = _models_dir(home_or_cfg) / ACTIVE_FILE
    _write_atomic(pointer, version + "\n")


# --- hashes -----------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(home_or_cfg: Config | Path | str, version: str) -> dict[str, Any]:
    """A version's metadata.json (the model card)."""
    path = version_dir(home_or_cfg, version) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TamperedModelError(f"{path}: unreadable model card ({e})") from None


def verify_version(home_or_cfg: Config | Path | str, version: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every recorded SHA-256 (but `skip`); returns the metadata or raises TamperedModelError naming the file."""
    folder = version_dir(home_or_cfg, version)
    metadata = read_metadata(home_or_cfg, version)
    files = metadata.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise TamperedModelError(f"{folder}: metadata.json records no SHA-256 for {WEIGHTS_FILE}; refusing to load")
    for name, expected in files.items():
        if name not in skip:
            _check_file(folder, name, expected)
    return metadata


def _check_file(folder: Path, name: str, expected: str, data: bytes | None = None) -> None:
    path = folder / name
    if Path(name).name != name:
        raise TamperedModelError(f"{folder}: metadata.json names a file outside the version folder: {name!r}")
    if data is None and not path.is_file():
        raise TamperedModelError(f"{path}: missing, but recorded in metadata.json")
    actual = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
    if actual != expected:
        raise TamperedModelError(
            f"{path}: SHA-256 mismatch (recorded {expected[:16]}..., found {actual[:16]}...): the file changed "
            "after the version was saved; refusing to load it"
        )


# --- weights ----------------------------------------------------------------------------------------------------


def save_weights(module: nn.Module, path: Path) -> None:
    """The state dict as safetensors; tied tensors are stored once, their other names kept as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, tensor in module.state_dict().items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if view in seen:  # the same tensor under another name (tied weights)
            aliases[name] = seen[view]
            continue
        seen[view] = name
        # Another view of a storage already written must be copied: safetensors refuses shared memory.
        tensors[name] = tensor.detach().clone() if storage in storages else tensor.detach().contiguous()
        storages.add(storage)
    save_file(tensors, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases)})


def load_weights(module: nn.Module, data: bytes) -> None:
    """Load safetensors bytes written by save_weights into `module`, strictly (every tensor must match)."""
    state = load_safetensors_bytes(data)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    for alias, name in json.loads(header.get("__metadata__", {}).get("aliases", "{}")).items():
        state[alias] = state[name]
    module.load_state_dict(state, strict=True)


# --- save / load ------------------------------------------------------------------------------------------------


def save_version(model: MultimodalModel, cfg: Config, metadata: dict[str, Any] | None = None) -> str:
    """Write a new version folder (atomically: built aside, then renamed into place); returns its name.

    `metadata` adds to the model card: e.g. training_data, metrics, name, job id.
    """
    models_dir = cfg.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, model=model.cfg)  # the config that built these weights
    staging = models_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        save_weights(model, staging / WEIGHTS_FILE)
        save_config(cfg, staging / CONFIG_FILE)
        (staging / LABELS_FILE).write_text(json.dumps(list(model.classes), indent=2) + "\n")
        model.text_encoder.save_assets(staging)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        created = datetime.now(UTC)
        while True:
            version = _next_version(models_dir, created)
            card = _model_card(model, cfg, metadata or {}, version, created, files)
            (staging / METADATA_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
            try:
                staging.rename(models_dir / version)
                return version
            except OSError:
                if not (models_dir / version).exists():
                    raise
                # Another process took this number between listing and renaming: take the next one.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _next_version(models_dir: Path, created: datetime) -> str:
    numbers = [int(m.group(1)) for p in models_dir.iterdir() if (m := _VERSION.match(p.name))]
    return f"v{max(numbers, default=0) + 1:04d}-{created:%Y%m%dT%H%M%SZ}"


def _model_card(
    model: MultimodalModel,
    cfg: Config,
    extra: dict[str, Any],
    version: str,
    created: datetime,
    files: dict[str, str],
) -> dict[str, Any]:
    spec = model.image_spec
    card: dict[str, Any] = {
        "name": "mmderm multimodal dermatology classifier",
        "version": version,
        "created": created.isoformat(timespec="seconds"),
        "mmderm_version": __version__,
        "intended_use": INTENDED_USE,
        "disclaimer": DISCLAIMER,
        "labels": list(model.classes),
        "encoders": {"image": model.image_encoder.describe(), "text": model.text_encoder.describe()},
        "heads": {"embed_dim": model.cfg.embed_dim, "fusion": model.cfg.fusion},
        "input_spec": {
            "image": {
                "size": [spec.image_size, spec.image_size],
                "channels": "RGB",
                "scale": "[0, 1] then (x - mean) / std",
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            "text": {"max_length": model.cfg.max_text_length, "tokenizer": "tokenizer.json"},
        },
        "training_data": {},
        "metrics": {},
    }
    for key, value in extra.items():
        if key in _RESERVED:
            raise ValueError(f"metadata key {key!r} is written by the model store")
        card[key] = value
    card["files"] = files
    return card


def update_metadata(home_or_cfg: Config | Path | str, version: str, **fields: Any) -> dict[str, Any]:
    """Add or change model-card fields (metrics after training or evaluation); dict values merge one level deep."""
    for key in fields:
        if key in _RESERVED:
            raise ValueError(f"metadata key {key!r} is written by the model store")
    metadata = read_metadata(home_or_cfg, version)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(metadata.get(key), dict):
            metadata[key] = {**metadata[key], **value}
        else:
            metadata[key] = value
    _write_atomic(
        version_dir(home_or_cfg, version) / METADATA_FILE, json.dumps(metadata, indent=2, default=str) + "\n"
    )
    return metadata


def load_version(
    home_or_cfg: Config | Path | str, version: str | None = None, device: str | torch.device | None = None
) -> LoadedModel:
    """Verify and load a version (None: the active one) in eval mode on `device` (None: runtime.device)."""
    version = version or active_version(home_or_cfg)
    if version is None:
        raise ModelStoreError(
            f"no active model in {_models_dir(home_or_cfg)}; train one, then `python -m mmcore models promote VERSION`"
        )
    folder = version_dir(home_or_cfg, version)
    metadata = verify_version(home_or_cfg, version, skip=(WEIGHTS_FILE,))
    # Hash the very bytes we load, so the weights cannot change between the check and the load.
    data = (folder / WEIGHTS_FILE).read_bytes()
    _check_file(folder, WEIGHTS_FILE, metadata["files"][WEIGHTS_FILE], data)
    cfg = config_from_toml(folder / CONFIG_FILE, home=_home(home_or_cfg))
    if isinstance(home_or_cfg, Config):  # the machine's runtime settings, not the training machine's
        cfg = dataclasses.replace(cfg, runtime=home_or_cfg.runtime)
    classes = json.loads((folder / LABELS_FILE).read_text())
    # Architectures only: the pretrained files are not read again; the text tower rebuilds from this folder.
    model = build_model(cfg.model, classes, pretrained=False, assets=folder)
    load_weights(model, data)
    for tower, card in ((model.image_encoder, "image"), (model.text_encoder, "text")):
        described = metadata.get("encoders", {}).get(card, {})
        tower.pretrained = bool(described.get("pretrained", False))
        tower.source = str(described.get("source", tower.source))
    if device is None:
        device = cfg.runtime.device
    model = model.to(device if isinstance(device, torch.device) else resolve_device(device)).eval()
    return LoadedModel(model=model, cfg=cfg, metadata=metadata, version=version, path=folder)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- CLI --------------------------------------------------------------------------------------------------------


def cli_models(args: argparse.Namespace, cfg: Config) -> int:
    """`python -m mmcore models list|show|promote|verify [version] [--json]`."""
    from mmcore.cli import CliError, emit

    try:
        if args.action == "list":
            return _cli_list(args, cfg, emit)
        if args.action == "show":
            version = args.version or active_version(cfg)
            if version is None:
                raise CliError("no active model; name a version (see `python -m mmcore models list`)")
            metadata = read_metadata(cfg, version)
            emit(args, metadata, _card_text(metadata, active=version == active_version(cfg)))
            return 0
        if args.action == "promote":
            if not args.version:
                raise CliError("promote needs a version (see `python -m mmcore models list`)")
            set_active(cfg, args.version)
            emit(args, {"active": args.version}, f"active model: {args.version}")
            return 0
        return _cli_verify(args, cfg, emit)
    except ModelStoreError as e:
        raise CliError(str(e)) from None


def _cli_list(args: argparse.Namespace, cfg: Config, emit) -> int:
    active = active_version(cfg)
    rows = []
    for version in list_versions(cfg):
        try:
            card = read_metadata(cfg, version)
        except ModelStoreError as e:
            card = {"error": str(e)}
        rows.append({"version": version, "active": version == active, **_summary(card)})
    lines = [f"{len(rows)} model version(s) in {cfg.models_dir}"]
    for r in rows:
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["metrics"].items())
        lines.append(
            f"{'*' if r['active'] else ' '} {r['version']}  image={r['image']} text={r['text']} fusion={r['fusion']}"
            + (f"  {metrics}" if metrics else "")
        )
    emit(args, {"active": active, "versions": rows}, "\n".join(lines))
    return 0


def _summary(card: dict[str, Any]) -> dict[str, Any]:
    encoders = card.get("encoders", {})

    def tower(kind: str) -> str:
        t = encoders.get(kind, {})
        return f"{t.get('name', '?')}{'' if t.get('pretrained') else ' (not pretrained)'}"

    metrics = card.get("metrics", {})
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)} if isinstance(metrics, dict) else {}
    return {
        "created": card.get("created"),
        "image": tower("image"),
        "text": tower("text"),
        "fusion": card.get("heads", {}).get("fusion"),
        "metrics": flat,
    }


def _card_text(card: dict[str, Any], active: bool) -> str:
    lines = [f"{card.get('version')}{'  (active)' if active else ''}", f"  {card.get('intended_use', INTENDED_USE)}"]
    for key in ("created", "labels", "encoders", "heads", "input_spec", "training_data", "metrics"):
        lines.append(f"  {key}: {json.dumps(card.get(key), default=str)}")
    return "\n".join(lines)


def _cli_verify(args: argparse.Namespace, cfg: Config, emit) -> int:
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
