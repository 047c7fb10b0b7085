"""Model versions on disk: save, verify (SHA-256), load and list; and `promote`, the one way a version becomes the
active one (embed every case, build the index, activate, audit), whoever asks: CLI, Admin page or demo.

A version is a folder `models_dir/<version>` that describes itself, like a MONAI bundle: model.safetensors,
config.toml, labels.json, the text tower's tokenizer/architecture files, calibration and OOD files, and
metadata.json (the ModelCard, with the SHA-256 of every other file). Loading never unpickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

from mmcore import DISCLAIMER, __version__
from mmcore.config import Config, config_from_toml, save_config
from mmcore.devices import resolve_device
from mmcore.embeddings import EmbedReport, Eta, Progress, with_counts
from mmcore.model import MultimodalModel, build_model
from mmcore.model_card import INTENDED_USE, ModelCard, TowerCard, describe_training_data
from mmcore.ood import OODFileError, OODScorer, load_ood

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.toml"
LABELS_FILE = "labels.json"
METADATA_FILE = "metadata.json"
ACTIVE_FILE = "active"
_VERSION = re.compile(r"^v(\d{4,})-\d{8}T\d{6}Z$")


class ModelStoreError(Exception):
    """A model version is missing or unusable; the message says which and why."""


class TamperedModelError(ModelStoreError):
    """A version's files do not match the SHA-256 recorded when it was saved."""


@dataclass
class LoadedModel:
    model: MultimodalModel
    cfg: Config
    card: ModelCard
    version: str
    path: Path
    ood: OODScorer | None = None  # None for a version saved before it had one (`models fit-ood` adds it)


class PromotionRefused(ModelStoreError):
    """The version cannot be made active (no cases to index, no test evaluation, the index is owned elsewhere)."""


@dataclass(frozen=True)
class PromoteResult:
    version: str
    previous: str | None
    embedded: EmbedReport
    indexed: dict[str, int]  # vectors per collection
    seconds: float


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


def _activate(home_or_cfg: Config | Path | str, version: str) -> None:
    """Point `active` at `version` (after verifying its hashes), atomically. Only `promote` calls it."""
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


def read_card(home_or_cfg: Config | Path | str, version: str) -> ModelCard:
    """A version's model card (metadata.json), in today's schema whatever schema it was written in."""
    path = version_dir(home_or_cfg, version) / METADATA_FILE
    try:
        return ModelCard.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise TamperedModelError(f"{path}: unreadable model card ({e})") from None


def verify_version(home_or_cfg: Config | Path | str, version: str, skip: tuple[str, ...] = ()) -> ModelCard:
    """Check every recorded SHA-256 (but `skip`); returns the card or raises TamperedModelError naming the file."""
    folder = version_dir(home_or_cfg, version)
    card = read_card(home_or_cfg, version)
    if not isinstance(card.files, dict) or WEIGHTS_FILE not in card.files:
        raise TamperedModelError(f"{folder}: metadata.json records no SHA-256 for {WEIGHTS_FILE}; refusing to load")
    for name, expected in card.files.items():
        if name not in skip:
            _check_file(folder, name, expected)
    return card


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


def save_version(model: MultimodalModel, cfg: Config, card: ModelCard | None = None) -> str:
    """Write a new version folder (atomically: built aside, then renamed into place); returns its name.

    `card` brings what the caller knows (training data, training run, metrics); the store fills in the version,
    the encoders, heads and input spec, and the SHA-256 of every file.
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
            full = _fill_card(card or ModelCard(), model, version, created, files)
            (staging / METADATA_FILE).write_text(json.dumps(full.to_dict(), indent=2, default=str) + "\n")
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


def _fill_card(
    card: ModelCard, model: MultimodalModel, version: str, created: datetime, files: dict[str, str]
) -> ModelCard:
    spec = model.image_spec
    encoders = {}
    for kind, tower in (("image", model.image_encoder), ("text", model.text_encoder)):
        described = tower.describe()
        trained = card.encoders.get(kind, TowerCard()).trained
        encoders[kind] = TowerCard(
            described["name"], described["feature_dim"], described["pretrained"], described["source"], trained
        )
    return dataclasses.replace(
        card,
        version=version,
        created=created.isoformat(timespec="seconds"),
        mmderm_version=__version__,
        intended_use=INTENDED_USE,
        disclaimer=DISCLAIMER,
        trained_on=card.trained_on or describe_training_data(card.training_data.train),
        labels=list(model.classes),
        encoders=encoders,
        heads={"embed_dim": model.cfg.embed_dim, "fusion": model.cfg.fusion},
        input_spec={
            "image": {
                "size": [spec.image_size, spec.image_size],
                "channels": "RGB",
                "scale": "[0, 1] then (x - mean) / std",
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            "text": {"max_length": model.cfg.max_text_length, "tokenizer": "tokenizer.json"},
        },
        files=files,
    )


def update_card(home_or_cfg: Config | Path | str, version: str, change: Callable[[ModelCard], None]) -> ModelCard:
    """Change a version's card in place (evaluations, calibration, OOD) and write it atomically; returns it.

    `files` is the store's: a change to it is refused (use add_files).
    """
    with _card_lock(home_or_cfg, version):
        card = read_card(home_or_cfg, version)
        files = dict(card.files)
        change(card)
        if card.files != files:
            raise ValueError("the card's files are written by the model store (add_files)")
        _write_card(home_or_cfg, version, card)
    return card


def add_files(home_or_cfg: Config | Path | str, version: str, names: list[str]) -> ModelCard:
    """Record the SHA-256 of files written into a version folder after it was saved (calibration, OOD scorer)."""
    folder = version_dir(home_or_cfg, version)
    with _card_lock(home_or_cfg, version):
        card = read_card(home_or_cfg, version)
        for name in names:
            if Path(name).name != name or not (folder / name).is_file() or name == METADATA_FILE:
                raise ValueError(f"{name!r} is not a file of {folder}")
            card.files[name] = sha256_file(folder / name)
        _write_card(home_or_cfg, version, card)
    return card


def _card_lock(home_or_cfg: Config | Path | str, version: str) -> FileLock:
    return FileLock(str(version_dir(home_or_cfg, version) / ".metadata.lock"))


def _write_card(home_or_cfg: Config | Path | str, version: str, card: ModelCard) -> None:
    path = version_dir(home_or_cfg, version) / METADATA_FILE
    _write_atomic(path, json.dumps(card.to_dict(), indent=2, default=str) + "\n")


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
    card = verify_version(home_or_cfg, version, skip=(WEIGHTS_FILE,))
    # Hash the very bytes we load, so the weights cannot change between the check and the load.
    data = (folder / WEIGHTS_FILE).read_bytes()
    _check_file(folder, WEIGHTS_FILE, card.files[WEIGHTS_FILE], data)
    cfg = config_from_toml(folder / CONFIG_FILE, home=_home(home_or_cfg))
    if isinstance(home_or_cfg, Config):  # the machine's runtime settings, not the training machine's
        cfg = dataclasses.replace(cfg, runtime=home_or_cfg.runtime)
    classes = json.loads((folder / LABELS_FILE).read_text())
    # Architectures only: the pretrained files are not read again; the text tower rebuilds from this folder.
    model = build_model(cfg.model, classes, pretrained=False, assets=folder)
    load_weights(model, data)
    for tower, kind in ((model.image_encoder, "image"), (model.text_encoder, "text")):
        described = card.encoders.get(kind, TowerCard(source=tower.source))
        tower.pretrained, tower.source = described.pretrained, described.source
    if device is None:
        device = cfg.runtime.device
    model = model.to(device if isinstance(device, torch.device) else resolve_device(device)).eval()
    try:
        ood = load_ood(folder)  # its files' hashes were checked above with the rest
    except OODFileError as e:
        raise TamperedModelError(str(e)) from None
    return LoadedModel(model=model, cfg=cfg, card=card, version=version, path=folder, ood=ood)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- promotion: the one path ---------------------------------------------------------------------------------


def promote(
    cfg: Config,
    version: str,
    user: str,
    progress: Progress | Callable[[float, str], None] | None = None,
    *,
    allow_unevaluated: bool = False,
    loaded: LoadedModel | None = None,
) -> PromoteResult:
    """Make `version` the active one: embed every case (only what is not stored yet), build its case index,
    activate it, and write one audit entry. Refused (PromotionRefused) when the index would be empty, when the
    version has no test evaluation (unless `allow_unevaluated`, which the audit entry records), or when another
    process owns the local index. The same function rolls back to an older version.
    """
    from mmcore.audit import AuditLog

    started = time.perf_counter()
    progress = with_counts(progress)

    def report(fraction: float, text: str, **counts: object) -> None:
        if progress is not None:
            progress(min(1.0, max(0.0, fraction)), text, **counts)

    previous = active_version(cfg)
    card = verify_version(cfg, version)
    if not card.evaluated and not allow_unevaluated:
        raise PromotionRefused(
            f"{version} has no test evaluation, so nobody knows how it scores; evaluate it first "
            f"(python -m mmcore eval --model {version}), or promote it anyway, explicitly (--allow-unevaluated)"
        )
    # refresh_index is the whole bar: activating (a pointer and an audit entry) takes milliseconds, and a share kept
    # for it made the time left ~7 s long at every point of a 10,015-case promotion
    embedded, counts = refresh_index(cfg, version, progress=report, loaded=loaded)
    _activate(cfg, version)
    AuditLog(cfg.audit_path).append(
        "promote",
        user,
        model_version=version,
        previous=previous or "",
        rollback=bool(previous) and _number(version) < _number(previous),
        unevaluated=not card.evaluated,
        indexed_image=counts.get("image", 0),
        indexed_text=counts.get("text", 0),
        cases=embedded.cases,
        without_note=embedded.without_note,
    )
    report(1.0, f"{version} is active", stage="done")
    return PromoteResult(version, previous, embedded, counts, round(time.perf_counter() - started, 2))


def refresh_index(
    cfg: Config,
    version: str,
    progress: Progress | Callable[[float, str], None] | None = None,
    loaded: LoadedModel | None = None,
) -> tuple[EmbedReport, dict[str, int]]:
    """Bring a version's case index in line with the case store: embed what is new or changed, then fill the index
    (what promotion does before it activates; also what accepting a clinician's case does for the active version).
    PromotionRefused when the index would be empty or another process owns it."""
    from mmcore.cases import CaseStore
    from mmcore.embeddings import embed_cases, plan_embedding
    from mmcore.index import IndexLockedError, get_index

    progress = with_counts(progress)

    def report(fraction: float, text: str, **counts: object) -> None:
        if progress is not None:
            progress(min(1.0, max(0.0, fraction)), text, **counts)

    report(0.0, f"loading {version}", stage="loading")
    loaded = loaded or load_version(cfg, version)
    cache_dir = cfg.cache_dir if loaded.card.training.finetune == "heads" else None  # frozen towers: cached features
    try:
        index = get_index(cfg)
    except IndexLockedError as e:
        raise PromotionRefused(f"{e}; promote from the Admin page of the app that owns it") from None
    with CaseStore(cfg.home) as store:
        if store.count() == 0:
            raise PromotionRefused(f"the case store in {cfg.home} is empty: import or synthesise cases first")
        plan = plan_embedding(loaded.model, store, version, cfg.index.note_preference, cache_dir=cache_dir)
        # The bar's fraction is of the estimated time (embeddings.ITEM_MS): at 10,015 cases with no cached features,
        # embedding is ~98% of it and indexing ~2%; with every feature cached, indexing is about half.
        share = plan.embed_ms / max(plan.embed_ms + plan.index_ms, 1e-9)
        images, notes = len(plan.todo["image"]), len(plan.todo["text"])
        report(0.0, f"embedding {images:,} images and {notes:,} notes", stage="planned")  # the work starts here
        embedded = embed_cases(
            loaded.model,
            store,
            version,
            cfg.index.note_preference,
            cache_dir=cache_dir,
            num_workers=cfg.train.num_workers,
            progress=lambda f, text, **c: report(share * f, text, **c),
            plan=plan,
        )
        if embedded.image + embedded.text == 0:
            raise PromotionRefused(f"no case of {cfg.home} has an image or a note to index; refusing an empty index")
        total, done = embedded.image + embedded.text, 0
        eta = Eta(total)  # issue 14: the index step's elapsed and remaining time, as the embedding step words its own

        def indexed(n: int) -> None:
            nonlocal done
            done += n
            text = f"indexing: {done:,} of {total:,} vectors · {eta(done)}"
            report(share + (1 - share) * done / total, text, stage="indexing", done=done, total=total)

        counts = index.build(version, store, progress=indexed)
    if not any(counts.values()):
        raise PromotionRefused(f"the index of {version} came out empty; the active model is unchanged")
    return embedded, counts


def _number(version: str) -> int:
    match = _VERSION.match(version)
    return int(match.group(1)) if match else 0
