"""Typed, frozen configuration: TOML presets, MMDERM_* environment variables and `--set section.key=value`.

Precedence, lowest first: dataclass defaults < preset/file < environment < `--set`. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and why."""


@dataclass(frozen=True)
class ModelConfig:
    image_encoder: str = "efficientnet_lite0"
    text_encoder: str = "minilm"
    image_encoder_path: str = ""  # local weights for densenet121 ("" = torch hub cache)
    text_encoder_path: str = ""  # local BERT-family directory for `bert`
    pretrained: bool = True
    embed_dim: int = 128  # projection and shared-layer width, as in the paper's code
    fusion: str = "mean"  # mean | gated | concat_mlp
    image_size: int = 224
    max_text_length: int = 128
    dropout: float = 0.1


@dataclass(frozen=True)
class LossConfig:
    ce_image: float = 1.0
    ce_text: float = 1.0
    ce_fused: float = 1.0  # only for learned fusions (gated, concat_mlp), whose weights only the fused logits reach
    cosine: float = 1.0
    l1: float = 1.0
    ntxent: float = 0.5
    temperature: float = 0.07
    # partial fine-tuning: weight of outlier exposure, KL(uniform || softmax) of the image logits of the training
    # photos redrawn with their lesion removed (SynthDerm only), so that skin alone predicts nothing. 0: off.
    outlier_exposure: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-5
    balanced_sampling: bool = True
    augment: bool = True
    # heads: towers frozen, heads trained on cached features; partial: the last `trainable_blocks` blocks of each
    # tower train too, on cached activations of the frozen trunk; full: everything trains (a GPU).
    finetune: str = "full"
    trainable_blocks: int = 2
    augment_views: int = 4  # partial: augmented views of each image whose trunk activations are cached
    # partial: top text-tower layers that train (the authors train their text tower's top layer); 0 keeps the text
    # tower frozen behind its cached pooled features: one MiniLM layer costs more on CPU than two image blocks.
    trainable_text_layers: int = 0
    amsgrad: bool = False  # Adam's amsgrad variant, as the paper's code
    note_strategies: tuple[str, ...] = ("P1",)  # one drawn per sample when several
    train_domains: tuple[str, ...] = ()  # empty: every domain
    source: str = ""  # empty: every source in the case store
    seed: int = 0
    num_workers: int = 0
    amp: bool = True  # CUDA only
    max_steps: int = 0  # 0: no limit; tests and smoke runs cap the work


@dataclass(frozen=True)
class DataConfig:
    synth_n: int = 1400
    synth_domains: tuple[str, ...] = ("dermoscopy", "clinical", "atlas")
    synth_balanced: bool = False
    synth_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test


@dataclass(frozen=True)
class IntakeConfig:
    max_bytes: int = 25_000_000
    max_pixels: int = 50_000_000  # decompression-bomb cap; a 100-megapixel PNG is refused
    upload_max_pixels: int = 25_000_000  # uploads (Diagnose, check-image): peak RSS <= 300 MB (intake_memory.md)
    max_csv_bytes: int = 100_000_000  # an import's metadata CSV is read whole: refuse larger ones
    import_roots: tuple[str, ...] = ()  # MMDERM_IMPORT_ROOTS: where import jobs may read (empty: <home>/imports)


@dataclass(frozen=True)
class IndexConfig:
    chroma_url: str = ""  # MMDERM_CHROMA_URL: use a Chroma server instead of the local persistent path
    # exact: NumPy over the collection's vectors (recall 1, 1.08x raw NumPy at 100k: bench/results/retrieval.md);
    # hnsw: Chroma's HNSW, which missed recall@10 0.99 at 100k on 2 cores unless slower than exact search.
    search: str = "exact"
    ef_construction: int = 200
    ef_search: int = 1024  # the only setting that reached recall@10 0.99 at 100k
    max_neighbors: int = 32
    exact_rerank: bool = False  # re-ranking HNSW candidates exactly added cost and no recall
    # The text collection holds each case's first note in this order: what clinicians type first, then the
    # structured findings report, then the class template and the free descriptions.
    note_preference: tuple[str, ...] = ("clinical", "P1", "M", "P2", "P3")


@dataclass(frozen=True)
class JobsConfig:
    max_concurrent: int = 1
    heartbeat_s: float = 2.0
    cancel_grace_s: float = 10.0
    gpus: int = 0


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # 0: torch's default


@dataclass(frozen=True)
class Config:
    home: Path = REPO_ROOT / "var"
    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # Where things live under the data home.
    @property
    def cases_db(self) -> Path:
        return self.home / "cases.sqlite"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.jsonl"

    def replace(self, **overrides: str) -> Config:
        """A copy with `section.key=value` overrides applied (values parsed as TOML)."""
        cfg = _apply(self, _parse_sets(f"{k}={v}" for k, v in overrides.items()), origin="replace()")
        check_ranges(cfg)
        return cfg


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "intake": IntakeConfig,
    "index": IndexConfig,
    "jobs": JobsConfig,
    "runtime": RuntimeConfig,
}
# Environment variables with a name of their own; the rest are MMDERM_<SECTION>__<KEY>.
_ENV_ALIASES = {
    "MMDERM_CHROMA_URL": "index.chroma_url",
    "MMDERM_DEVICE": "runtime.device",
    "MMDERM_IMPORT_ROOTS": "intake.import_roots",
}


# Ranges every value must lie in, whoever sets it (preset, environment, --set, the Admin form): (low, high), both
# inclusive, None for no bound; and the allowed words of the settings that name a choice.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "model.embed_dim": (2, 4096),
    "model.image_size": (16, 2048),
    "model.max_text_length": (8, 512),
    "model.dropout": (0.0, 0.95),
    "loss.ce_image": (0.0, None),
    "loss.ce_text": (0.0, None),
    "loss.ce_fused": (0.0, None),
    "loss.cosine": (0.0, None),
    "loss.l1": (0.0, None),
    "loss.ntxent": (0.0, None),
    "loss.temperature": (1e-3, 10.0),
    "loss.outlier_exposure": (0.0, None),
    "train.epochs": (1, 10_000),
    "train.batch_size": (2, 65_536),  # the alignment losses need pairs
    "train.lr": (1e-8, 1.0),
    "train.weight_decay": (0.0, 1.0),
    "train.trainable_blocks": (0, 64),
    "train.augment_views": (1, 64),
    "train.trainable_text_layers": (0, 64),
    "train.num_workers": (0, 64),
    "train.max_steps": (0, None),
    "data.synth_n": (1, 1_000_000),
    "intake.max_bytes": (1, None),
    "intake.max_pixels": (1, None),
    "intake.upload_max_pixels": (1, None),
    "intake.max_csv_bytes": (1, None),
    "index.ef_construction": (1, None),
    "index.ef_search": (1, None),
    "index.max_neighbors": (2, None),
    "jobs.max_concurrent": (1, 64),
    "jobs.heartbeat_s": (0.1, 3600.0),
    "jobs.cancel_grace_s": (0.0, 3600.0),
    "jobs.gpus": (0, 64),
    "runtime.threads": (0, 1024),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.fusion": ("mean", "gated", "concat_mlp"),
    "train.finetune": ("heads", "partial", "full"),
    "index.search": ("exact", "hnsw"),
}


def check_ranges(cfg: Config) -> None:
    """Raise ConfigError naming every value outside its range or choices."""
    problems = []
    for key, (low, high) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            problems.append(f"{key} must be {bounds}, got {value!r}")
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            problems.append(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    fractions = cfg.data.split_fractions
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        problems.append(f"data.split_fractions must be non-negative and not all zero, got {list(fractions)}")
    device = cfg.runtime.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"runtime.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if problems:
        raise ConfigError("; ".join(problems))


def preset_names() -> list[str]:
    """Names of the presets shipped in mmcore/configs/."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def resolve_path(path: str | Path, base: Path = REPO_ROOT) -> Path:
    """Resolve a relative path against `base` (the repository root or data home), never the current directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_config(
    name_or_path: str | Path | None = None,
    sets: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config from a preset name or TOML path, the environment and `--set` overrides."""
    env = os.environ if env is None else env
    name_or_path = name_or_path or env.get("MMDERM_CONFIG") or "default"
    path = _find_preset(str(name_or_path))
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    cfg = Config(preset=path.stem if path.parent == PRESETS_DIR else str(path))
    cfg = _apply(cfg, data, origin=str(path))
    cfg = _apply(cfg, _env_overrides(env), origin="environment")
    cfg = _apply(cfg, _parse_sets(sets), origin="--set")
    home = env.get("MMDERM_HOME")
    if home:
        cfg = dataclasses.replace(cfg, home=resolve_path(home))
    check_ranges(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The sections as plain TOML-able dicts (no home: it belongs to the machine, not the model)."""
    out: dict[str, Any] = {}
    for name in _SECTION_TYPES:
        section = dataclasses.asdict(getattr(cfg, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def save_config(cfg: Config, path: Path) -> None:
    """Write the sections as TOML (what a model version carries as config.toml)."""
    path.write_text(tomli_w.dumps(config_to_dict(cfg)))


def config_from_toml(path: Path, home: Path | None = None) -> Config:
    """Read a config.toml written by save_config (unknown keys are errors there too)."""
    cfg = _apply(Config(preset=str(path)), _migrate(tomllib.loads(path.read_text())), origin=str(path))
    return dataclasses.replace(cfg, home=home) if home else cfg


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Keys of config.toml files written before they were renamed (model versions and runs keep their file)."""
    train = data.get("train", {})
    if "freeze_backbones" in train:
        train["finetune"] = "heads" if train.pop("freeze_backbones") else "full"
    data.get("index", {}).pop("text_strategy", None)  # now index.note_preference
    return data


def _find_preset(name: str) -> Path:
    candidate = PRESETS_DIR / f"{name}.toml"
    if candidate.is_file():
        return candidate
    path = resolve_path(name)
    if path.is_file():
        return path
    raise ConfigError(f"no preset or file named {name!r}; presets: {', '.join(preset_names())}")


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    sets = []
    for key, value in env.items():
        if key in _ENV_ALIASES:
            sets.append(f"{_ENV_ALIASES[key]}={value}")
        elif key.startswith("MMDERM_") and "__" in key:
            section, _, name = key.removeprefix("MMDERM_").lower().partition("__")
            sets.append(f"{section}.{name}={value}")
    return _parse_sets(sets)


def _parse_sets(sets: Iterable[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in sets:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        out.setdefault(section, {})[name] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    """A TOML value if it parses as one (1, 0.5, true, ["a"]), else the bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply(cfg: Config, data: Mapping[str, Any], origin: str) -> Config:
    changes: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _SECTION_TYPES:
            raise ConfigError(f"{origin}: unknown section [{section}]; known: {', '.join(_SECTION_TYPES)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        current = changes.get(section, getattr(cfg, section))
        changes[section] = _apply_section(current, section, values, origin)
    return dataclasses.replace(cfg, **changes)


def _apply_section(current: Any, section: str, values: Mapping[str, Any], origin: str) -> Any:
    hints = typing.get_type_hints(type(current))
    updates = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{origin}: unknown key {section}.{key}; [{section}] has: {known}")
        updates[key] = _coerce(value, hints[key], f"{section}.{key}", origin)
    return dataclasses.replace(current, **updates)


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    origin_type = typing.get_origin(hint)
    if origin_type is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{origin}: {key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0]
        if len(args) > 1 and args[1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{origin}: {key} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, item, key, origin) for v in value)
    if origin_type is types.UnionType:
        hint = typing.get_args(hint)[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: {key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: {key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{origin}: {key} must be a string, got {value!r}")
    return value
