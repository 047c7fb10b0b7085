"""The model card: a typed, fixed-schema description of one model version (MONAI bundle's metadata.json), what it was
trained on in one sentence a clinician reads first, its metrics by split, strategy and modality, its calibration,
out-of-distribution threshold and explanation quality. Reads today's schema and the first one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

CARD_SCHEMA = 2
INTENDED_USE = "Research use only; not for diagnostic purposes."
CANONICAL_EVALUATION = "test_clinical"  # the evaluation a card leads with: test split, the notes clinicians type
# What each known source is, in words a clinician reads first (DESIGN section 5).
SOURCE_DESCRIPTIONS = {"synthderm": "SynthDerm: procedurally drawn lesions, not real photographs"}
FINETUNE_MODES = ("heads", "partial", "full")
MODALITIES = ("image", "text", "fused")


@dataclass
class TowerCard:
    """One encoder as the card reports it: which, whether pretrained weights were loaded, and what trained."""

    name: str = "?"
    feature_dim: int = 0
    pretrained: bool = False
    source: str = ""
    trained: list[str] = field(default_factory=list)  # the tower's parts that learned ([] = frozen, ["all"])


@dataclass
class DataSummary:
    """Cases of one split: counts by diagnosis, acquisition domain, source, Fitzpatrick type and site."""

    n: int = 0
    dx: dict[str, int] = field(default_factory=dict)
    domain: dict[str, int] = field(default_factory=dict)
    source: dict[str, int] = field(default_factory=dict)
    fitzpatrick: dict[str, int] = field(default_factory=dict)  # "1".."6", "unknown"
    site: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> cases left out


@dataclass
class TrainingData:
    train: DataSummary = field(default_factory=DataSummary)
    val: DataSummary = field(default_factory=DataSummary)
    note_strategies: list[str] = field(default_factory=list)
    train_domains: list[str] = field(default_factory=list)  # [] = every domain
    source: str = ""  # "" = every source in the case store


@dataclass
class TrainingRun:
    """How the weights were trained; `validation` holds the selected epoch's validation numbers."""

    finetune: str = "heads"  # heads | partial | full
    trainable_blocks: int = 0  # partial: the last blocks of each tower that trained
    epochs: int = 0
    steps: int = 0
    selected_epoch: int = 0
    selection: str = ""
    augment: bool = False
    balanced_sampling: bool = True
    batch_size: int = 0
    lr: float = 0.0
    world_size: int = 1
    device: str = "cpu"
    amp: bool = False
    seconds: float = 0.0
    run_dir: str = ""
    validation: dict[str, float] = field(default_factory=dict)


@dataclass
class ModalityScores:
    """Classification of one modality on one evaluation (ece: of the calibrated scores where calibrated)."""

    accuracy: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    kappa: float | None = None  # unweighted Cohen's kappa: diagnoses are not an ordinal scale
    auroc_macro: float | None = None
    ece: float | None = None
    ece_uncalibrated: float | None = None


@dataclass
class Evaluation:
    """One stored evaluation: split, note strategy, cases, scores per modality and retrieval mAP per pairing."""

    split: str = "test"
    text_strategy: str = "clinical"
    n: int = 0
    created: str = ""
    file: str = ""
    modalities: dict[str, ModalityScores] = field(default_factory=dict)
    retrieval_map: dict[str, float | None] = field(default_factory=dict)  # "text_to_image" -> mAP
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelCard:
    """metadata.json of a model version. `files` (SHA-256 per file) is written by the model store only."""

    version: str = ""
    created: str = ""
    mmderm_version: str = ""
    name: str = "mmderm multimodal dermatology classifier"
    intended_use: str = INTENDED_USE
    disclaimer: str = ""
    trained_on: str = ""  # one sentence, first thing a clinician reads
    labels: list[str] = field(default_factory=list)
    encoders: dict[str, TowerCard] = field(default_factory=dict)  # "image", "text"
    heads: dict[str, Any] = field(default_factory=dict)
    input_spec: dict[str, Any] = field(default_factory=dict)
    training_data: TrainingData = field(default_factory=TrainingData)
    training: TrainingRun = field(default_factory=TrainingRun)
    evaluations: dict[str, Evaluation] = field(default_factory=dict)  # "test_clinical" -> Evaluation
    calibration: dict[str, Any] = field(default_factory=dict)  # mmcore.calibrate.Calibration.to_dict()
    ood: dict[str, Any] = field(default_factory=dict)  # modality -> method, threshold, validation pass rate
    explanation_quality: dict[str, Any] = field(default_factory=dict)  # split, n, method -> pointing, IoU, deletion
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the job that trained it
    files: dict[str, str] = field(default_factory=dict)
    schema: int = CARD_SCHEMA

    @property
    def headline(self) -> Evaluation | None:
        """The evaluation to lead with: test split with clinical notes when there is one, else the newest."""
        if CANONICAL_EVALUATION in self.evaluations:
            return self.evaluations[CANONICAL_EVALUATION]
        return max(self.evaluations.values(), key=lambda e: e.created, default=None)

    @property
    def evaluated(self) -> bool:
        """Whether the version has an evaluation on its test split."""
        return any(e.split == "test" for e in self.evaluations.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what metadata.json holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """A card from metadata.json: today's schema, or the first one (flat metrics) converted."""
        if not isinstance(data, dict):
            raise ValueError(f"a model card is a JSON object, got {type(data).__name__}")
        if int(data.get("schema", 1) or 1) < 2:
            data = _from_schema_1(data)
        return _build(cls, data)


def describe_training_data(train: DataSummary) -> str:
    """One sentence on what the model learned from, e.g. "SynthDerm: procedurally drawn lesions, not real
    photographs (980 training cases; dermoscopy, clinical and atlas views)"."""
    sources = [s for s, n in sorted(train.source.items(), key=lambda kv: -kv[1]) if n]
    named = [SOURCE_DESCRIPTIONS.get(s, s) for s in sources] or ["unknown data"]
    domains = [d for d in train.domain if d and d != "(none)"]
    views = f"; {_join(domains)} views" if domains else ""
    return f"{'; '.join(named)} ({train.n:,} training cases{views})"


def data_summary(cases: list[Any], skipped: dict[str, int] | None = None) -> DataSummary:
    """Counts of Case objects by diagnosis, domain, source, Fitzpatrick type and site."""
    from collections import Counter

    def count(values: list[Any]) -> dict[str, int]:
        return dict(sorted(Counter(values).items()))

    return DataSummary(
        n=len(cases),
        dx=count([c.dx for c in cases]),
        domain=count([c.domain or "(none)" for c in cases]),
        source=count([c.source for c in cases]),
        fitzpatrick=count([str(c.fitzpatrick) if c.fitzpatrick else "unknown" for c in cases]),
        site=count([c.site or "unknown" for c in cases]),
        skipped=dict(skipped or {}),
    )


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---- reading: typed construction from plain dicts, unknown keys kept out ----


def _build(cls: type, data: Any) -> Any:
    """An instance of dataclass `cls` from a dict, nested dataclasses included; unknown keys are ignored."""
    if not isinstance(data, dict):
        return cls()
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name])
    return cls(**kwargs)


def _value(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _value(options[0], value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if origin is dict and isinstance(value, dict):
        item = typing.get_args(hint)[1]
        if dataclasses.is_dataclass(item):
            return {k: _build(item, v) for k, v in value.items()}
    return value


def _from_schema_1(old: dict[str, Any]) -> dict[str, Any]:
    """The first cards: flat `val_*`/`test_clinical_*` metrics, nested per-modality dicts, an `evaluation` table."""
    new = {k: v for k, v in old.items() if k not in ("metrics", "evaluation", "training", "encoders")}
    new["encoders"] = {k: {**v, "trained": []} for k, v in (old.get("encoders") or {}).items()}
    run = dict(old.get("training") or {})
    frozen = run.pop("freeze_backbones", True)
    run["finetune"] = "heads" if frozen else "full"
    if not frozen:
        for tower in new["encoders"].values():
            tower["trained"] = ["all"]
    metrics = old.get("metrics") or {}
    run["validation"] = {
        k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_") and isinstance(v, int | float)
    }
    new["training"] = run
    evaluations = {}
    for name, summary in (old.get("evaluation") or {}).items():
        split, _, strategy = name.partition("_")
        modalities = {
            m: {
                "accuracy": summary.get(f"accuracy_{m}"),
                "balanced_accuracy": summary.get(f"balanced_accuracy_{m}"),
                "macro_f1": summary.get(f"macro_f1_{m}"),
                "auroc_macro": summary.get(f"auroc_macro_{m}"),
                "ece_uncalibrated": summary.get(f"ece_{m}"),
            }
            for m in MODALITIES
        }
        retrieval = {k.removeprefix("mAP_"): v for k, v in summary.items() if k.startswith("mAP_")}
        evaluations[name] = {
            "split": split,
            "text_strategy": strategy,
            "n": summary.get("n", 0),
            "created": summary.get("created", ""),
            "file": summary.get("file", ""),
            "modalities": modalities,
            "retrieval_map": retrieval,
            "skipped": summary.get("skipped") or {},
        }
    new["evaluations"] = evaluations
    data = dict(old.get("training_data") or {})
    if not isinstance(data.get("train_domains"), list):  # the first cards wrote "all"
        data["train_domains"] = []
    if data.get("source") == "all":
        data["source"] = ""
    new["training_data"] = data
    train = data.get("train") or {}
    new["trained_on"] = describe_training_data(_build(DataSummary, train)) if train else ""
    new["schema"] = CARD_SCHEMA
    return new
