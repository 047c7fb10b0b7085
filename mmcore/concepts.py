"""Findings the model sees: a score per ABCD finding of a photo, read from the model's own shared space. Zero-shot, the
similarity of the image embedding to prompts of the finding present against absent (MONET, Kim et al., Nat Med 2024);
where a version was trained on cases with known findings, a logistic probe per finding fitted on its training split
(findings.safetensors + findings.json in the version folder), which calibrates the score.

Every score is sigmoid(embedding . direction + bias) for one direction of the shared space, so its Grad-CAM is that of a
cosine similarity (explain_image.similarity_maps) and a findings query is a vector the case index can search.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from mmcore.findings import COLOURS, FEATURES, STRUCTURES
from mmcore.notes import (
    ASYMMETRY_WORDS,
    BORDER_WORDS,
    COLOUR_WORDS,
    FEATURE_WORDS,
    NETWORK_WORDS,
    STRUCTURE_WORDS,
)

if TYPE_CHECKING:
    from mmcore.cases import Case
    from mmcore.config import Config
    from mmcore.model import MultimodalModel
    from mmcore.model_card import ModelCard
    from mmcore.model_store import LoadedModel

SCHEMA_VERSION = 1
WEIGHTS_FILE = "findings.safetensors"
META_FILE = "findings.json"
# The temperature of the label-aware NT-Xent the shared space was trained with (DESIGN section 5): the zero-shot score
# is a two-way softmax over the present and absent prompts at that temperature, as CLIP-style zero-shot reads a space.
ZERO_SHOT_TEMPERATURE = 0.07
# Where a finding has no opposite to name, its "absent" prompts describe a lesion without naming it rather than negate
# it ("No streaks."): mean-pooled sentence encoders read little of negation. On the demo the two variants tie
# (bench/results/findings.md); zero-shot is the uncalibrated fallback either way.
REFERENCE_PROMPTS = ("A skin lesion.", "Dermoscopy of a skin lesion.", "A lesion on the skin.", "A pigmented lesion.")
MIN_CASES = 10  # positives and negatives a probe needs in the training split; fewer: the zero-shot score stays
MIN_VAL_CASES = 5  # positives and negatives below which a validation AUROC is not reported (too noisy to read)
PROBE_C = 1.0  # inverse L2 strength on standardised embeddings; 0.1 and 1 tie on validation (bench/findings.py)
LIKELY, UNLIKELY = 0.7, 0.3  # a calibrated score at or above LIKELY reads "likely", below UNLIKELY "unlikely"


# ---- the vocabulary: one Finding per scored term -------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One finding of the ABCD vocabulary as the model is asked about it.

    group: asymmetry | border | colour | structure | network | feature; term: its value in Case.findings.
    present / absent: the prompts (in the wording the training notes use, mmcore.notes) of the finding seen and of
    its opposite (symmetric, a sharp border, a regular network) or, where it has none, REFERENCE_PROMPTS; negated:
    "No ..." prompts, kept for the benchmark; phrase: how a query sentence names it.
    """

    name: str
    group: str
    term: str
    present: tuple[str, ...]
    absent: tuple[str, ...]
    phrase: str
    negated: tuple[str, ...] = ()

    def drawn(self, findings: dict[str, Any] | None) -> bool | None:
        """Whether a case's recorded findings (Case.findings) show this one; None when they do not say."""
        f = findings or {}
        if self.group == "asymmetry":
            return None if "asymmetry" not in f else int(f["asymmetry"]) >= 1
        if self.group == "border":
            return None if not f.get("border") else f["border"] in ("indistinct", "mixed")
        if self.group == "network":
            return None if "structures" not in f else f.get("network") == "irregular"
        key = {"colour": "colours", "structure": "structures", "feature": "features"}[self.group]
        return None if key not in f else self.term in f[key]


def _bare(words: str) -> str:
    """A phrase without its article, for "No ..." ("a strawberry pattern" -> "strawberry pattern")."""
    for article in ("a ", "an "):
        if words.startswith(article):
            return words[len(article) :]
    return words


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _vocabulary() -> tuple[Finding, ...]:
    out = [
        Finding(
            "asymmetry",
            "asymmetry",
            "any",
            tuple(f"A lesion, {w}." for w in (*ASYMMETRY_WORDS[1], *ASYMMETRY_WORDS[2])),
            tuple(f"A lesion, {w}." for w in ASYMMETRY_WORDS[0]),
            "asymmetric",
        ),
        Finding(
            "indistinct border",
            "border",
            "indistinct",
            tuple(f"A lesion with {w}." for w in (*BORDER_WORDS["indistinct"], *BORDER_WORDS["mixed"])),
            tuple(f"A lesion with {w}." for w in BORDER_WORDS["sharp"]),
            "an indistinct border",
        ),
    ]
    for term in COLOURS:
        words = COLOUR_WORDS[term]
        out.append(
            Finding(
                term,
                "colour",
                term,
                tuple(p for w in words for p in (f"Colours: {w}.", f"It shows {w}.")),
                REFERENCE_PROMPTS,
                words[0],
                tuple(f"No {w}." for w in words),
            )
        )
    for group, terms, table in (("structure", STRUCTURES, STRUCTURE_WORDS), ("feature", FEATURES, FEATURE_WORDS)):
        for term in terms:
            words = table[term]
            out.append(
                Finding(
                    term,
                    group,
                    term,
                    tuple(p for w in words for p in (f"Dermoscopy shows {w}.", f"Structures: {w}.")),
                    REFERENCE_PROMPTS,
                    words[0],
                    tuple(p for w in words for p in (f"No {_bare(w)}.", f"There is no {_bare(w)}.")),
                )
            )
        if group == "structure":  # the network's kind right after the structures: what ABCD reads next
            out.append(
                Finding(
                    "atypical pigment network",
                    "network",
                    "irregular",
                    tuple(p for w in NETWORK_WORDS["irregular"] for p in (f"Dermoscopy shows an {w}.", f"D: {w}.")),
                    tuple(p for w in NETWORK_WORDS["regular"] for p in (f"Dermoscopy shows a {w}.", f"D: {w}.")),
                    "an atypical pigment network",
                )
            )
    return tuple(out)


FINDINGS: tuple[Finding, ...] = _vocabulary()
FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in FINDINGS)
_BY_NAME = {f.name: f for f in FINDINGS}


def finding(name: str) -> Finding:
    """The Finding called `name`; ValueError naming the known ones otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown finding {name!r}; known: {', '.join(FINDING_NAMES)}")
    return _BY_NAME[name]


def findings_query(names: Sequence[str]) -> str:
    """Selected findings as one sentence in the training notes' wording, e.g. "Dermoscopy shows a blue-white veil and
    an atypical pigment network.": a note that Predictor.similar(note=...) searches the image collection with."""
    chosen = [finding(n) for n in dict.fromkeys(names)]
    if not chosen:
        raise ValueError("choose at least one finding")
    by = {g: [f.phrase for f in chosen if f.group == g] for g in ("asymmetry", "border", "colour")}
    seen = [f.phrase for f in chosen if f.group in ("structure", "network", "feature")]
    parts = []
    if by["asymmetry"] or by["border"]:
        opener = "A lesion" + (", asymmetric in both axes," if by["asymmetry"] else "")
        opener += f" with {by['border'][0]}." if by["border"] else "."
        parts.append(opener.replace(",.", "."))
    if by["colour"]:
        parts.append(f"Colours: {_listing(by['colour'])}.")
    if seen:
        parts.append(f"Dermoscopy shows {_listing(seen)}.")
    return " ".join(parts)


# ---- the scorer -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindingScore:
    """One finding of one photo: score in [0, 1], its plain label, whether a probe calibrated it, and how well that
    score separated the finding on the version's validation split (AUROC; None where unknown)."""

    name: str
    group: str
    score: float
    label: str
    calibrated: bool
    zero_shot: float
    val_auroc: float | None = None


def label_of(score: float, calibrated: bool) -> str:
    """The plain word for a score: likely / possible / unlikely (marked uncalibrated for a zero-shot score)."""
    word = "likely" if score >= LIKELY else "possible" if score >= UNLIKELY else "unlikely"
    return word if calibrated else f"{word} (uncalibrated)"


@dataclass
class FindingsProbe:
    """Logistic probes on L2-normalised image embeddings: score_k = sigmoid(e . weights[k] + bias[k]), one per finding
    the training split had enough of. `meta` holds what was fitted on and the validation AUROC per finding."""

    names: tuple[str, ...]
    weights: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    meta: dict[str, Any] = field(default_factory=dict)
    zero_shot: np.ndarray | None = None  # (len(FINDINGS), D) the zero-shot directions at fitting: no prompts at load

    def save(self, folder: Path) -> list[str]:
        """Write findings.safetensors and findings.json into `folder`; returns the file names to hash."""
        arrays = {
            "weights": np.ascontiguousarray(self.weights, dtype=np.float32),
            "bias": np.ascontiguousarray(self.bias.reshape(1, -1), dtype=np.float32),
        }
        meta = {"schema_version": SCHEMA_VERSION, "names": list(self.names), **self.meta}
        if self.zero_shot is not None:
            arrays["zero_shot"] = np.ascontiguousarray(self.zero_shot, dtype=np.float32)
            meta["zero_shot_names"] = list(FINDING_NAMES)
        meta["shapes"] = {n: list(a.shape) for n, a in arrays.items()}
        folder = Path(folder)
        (folder / WEIGHTS_FILE).write_bytes(save_arrays(arrays, metadata={"format": "np"}))
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return [WEIGHTS_FILE, META_FILE]

    @classmethod
    def load(cls, folder: Path, files: dict[str, str] | None = None) -> FindingsProbe:
        """Read what save wrote; ValueError for anything missing, malformed or inconsistent, or (given the card's
        `files`) not recorded there with the SHA-256 of the bytes read."""
        folder = Path(folder)
        try:
            raw = {name: (folder / name).read_bytes() for name in (META_FILE, WEIGHTS_FILE)}
            if files is not None:
                for name, data in raw.items():
                    if files.get(name) != hashlib.sha256(data).hexdigest():
                        raise ValueError(f"{name} is not recorded in the model card with these contents")
            meta = json.loads(raw[META_FILE])
            arrays = load_arrays(raw[WEIGHTS_FILE])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError, ValueError) as e:
            raise ValueError(f"{folder}: unusable findings probe ({e}); refusing to load it") from None
        try:
            if meta["schema_version"] != SCHEMA_VERSION:
                raise ValueError(f"schema_version {meta['schema_version']!r}, this code reads {SCHEMA_VERSION}")
            names = tuple(str(n) for n in meta["names"])
            weights, bias = arrays["weights"], arrays["bias"].reshape(-1)
            if weights.ndim != 2 or len(weights) != len(names) or bias.shape != (len(names),):
                raise ValueError(f"weights {list(weights.shape)} and bias {list(bias.shape)} for {len(names)} names")
            zero_shot = arrays.get("zero_shot")
            if zero_shot is not None and zero_shot.shape != (len(meta["zero_shot_names"]), weights.shape[1]):
                raise ValueError(f"zero-shot directions {list(zero_shot.shape)}")
            if not all(np.isfinite(a).all() for a in arrays.values()):
                raise ValueError("non-finite probe weights")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{folder}: malformed findings probe ({type(e).__name__}: {e})") from None
        if zero_shot is not None and meta["zero_shot_names"] != list(FINDING_NAMES):  # another vocabulary: recompute
            zero_shot = None
        rest = {k: v for k, v in meta.items() if k not in ("schema_version", "names", "shapes", "zero_shot_names")}
        return cls(names, weights, bias, rest, zero_shot)


def load_findings_probe(folder: Path, files: dict[str, str] | None = None) -> FindingsProbe | None:
    """A version folder's findings probe (checked against the card's `files` hashes when given), or None when the
    version has none."""
    present = (Path(folder) / META_FILE).exists() or (Path(folder) / WEIGHTS_FILE).exists()
    return FindingsProbe.load(folder, files) if present else None


@dataclass
class FindingsScorer:
    """Every finding of FINDINGS scored from image embeddings: by its probe where the version has one, else zero-shot.

    zero_shot: (K, D) the normalised mean present-prompt embedding minus the absent one, per finding.
    """

    zero_shot: np.ndarray  # (K, D)
    probe: FindingsProbe | None = None
    temperature: float = ZERO_SHOT_TEMPERATURE

    def __post_init__(self) -> None:
        k, d = self.zero_shot.shape
        self._weights = self.zero_shot / self.temperature  # (K, D)
        self._bias = np.zeros(k, dtype=np.float32)
        self.calibrated = np.zeros(k, dtype=bool)
        self.val_auroc: list[float | None] = [None] * k
        if self.probe is not None:
            aurocs = self.probe.meta.get("val_auroc", {})
            for j, name in enumerate(self.probe.names):
                if name in _BY_NAME and self.probe.weights.shape[1] == d:
                    i = FINDING_NAMES.index(name)
                    self._weights[i], self._bias[i], self.calibrated[i] = self.probe.weights[j], self.probe.bias[j], 1
                    self.val_auroc[i] = aurocs.get(name)

    def zero_shot_scores(self, image_embeds: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) zero-shot scores (uncalibrated)."""
        return _sigmoid(np.asarray(image_embeds, dtype=np.float32) @ self.zero_shot.T / self.temperature)

    def scores(self, image_embeds: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) scores: calibrated by the probe where there is one, zero-shot elsewhere."""
        return _sigmoid(np.asarray(image_embeds, dtype=np.float32) @ self._weights.T + self._bias)

    def direction(self, name: str) -> np.ndarray:
        """(D,) the direction of the shared space whose similarity makes the finding's score (Grad-CAM target)."""
        return self._weights[FINDING_NAMES.index(finding(name).name)].copy()

    def explain(self, image_embed: np.ndarray) -> list[FindingScore]:
        """(D,) one image embedding -> its FindingScore per finding, in vocabulary order."""
        e = np.asarray(image_embed, dtype=np.float32).reshape(1, -1)
        scores, zero = self.scores(e)[0], self.zero_shot_scores(e)[0]
        return [
            FindingScore(
                f.name,
                f.group,
                float(scores[i]),
                label_of(float(scores[i]), bool(self.calibrated[i])),
                bool(self.calibrated[i]),
                float(zero[i]),
                self.val_auroc[i],
            )
            for i, f in enumerate(FINDINGS)
        ]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


@torch.inference_mode()
def embed_texts(model: MultimodalModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(N, D) L2-normalised shared-space embeddings of short texts through the text tower and head."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = {k: v.to(device) for k, v in model.tokenize(list(texts[start : start + batch_size])).items()}
        out.append(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), dtype=np.float32)


def zero_shot_directions(model: MultimodalModel, negated: bool = False) -> np.ndarray:
    """(K, D): per finding, the normalised mean embedding of its present prompts minus that of its absent prompts
    (negated: of its "No ..." prompts where it has them, the variant the benchmark compares)."""
    pairs = [(f.present, f.negated if negated and f.negated else f.absent) for f in FINDINGS]
    texts = list(dict.fromkeys(p for present, absent in pairs for p in (*present, *absent)))  # each prompt once
    embeds = dict(zip(texts, embed_texts(model.eval(), texts), strict=True))
    rows = [
        _unit(np.mean([embeds[p] for p in present], 0)) - _unit(np.mean([embeds[p] for p in absent], 0))
        for present, absent in pairs
    ]
    return np.stack(rows).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def build_scorer(
    model: MultimodalModel, folder: Path | None = None, files: dict[str, str] | None = None
) -> FindingsScorer:
    """The scorer of a loaded model: zero-shot from its text tower, with the probe of its version `folder` if any
    (checked against the card's `files` hashes when given)."""
    probe = load_findings_probe(folder, files) if folder else None
    if probe is not None and probe.zero_shot is not None and probe.zero_shot.shape[1] == model.cfg.embed_dim:
        return FindingsScorer(probe.zero_shot, probe)
    return FindingsScorer(zero_shot_directions(model), probe)


# ---- fitting the probe on a version's training split --------------------------------------------------------------


def fit_probe(embeds: np.ndarray, present: np.ndarray, c: float = PROBE_C) -> tuple[np.ndarray, float]:
    """(weights (D,), bias) of an L2 logistic regression of `present` (N,) on `embeds` (N, D), fitted on standardised
    embeddings and returned in the embedding's own units (the same logit)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(embeds, dtype=np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, np.asarray(present, dtype=int))
    w = clf.coef_[0] / scale  # (D,)
    return w.astype(np.float32), float(clf.intercept_[0] - (w * mean).sum())


def findings_matrix(cases: Sequence[Case]) -> np.ndarray:
    """(N, K) of 1 (drawn), 0 (not drawn) or -1 (unknown) per case and finding."""
    out = np.full((len(cases), len(FINDINGS)), -1, dtype=np.int8)
    for i, case in enumerate(cases):
        for k, f in enumerate(FINDINGS):
            drawn = f.drawn(case.findings)
            if drawn is not None:
                out[i, k] = int(drawn)
    return out


def case_image_embeds(
    model: MultimodalModel, store: Any, cases: Sequence[Case], cache_dir: Path | None = None
) -> np.ndarray:
    """(N, D) image embeddings of stored cases, the image tower's features read through the feature cache."""
    from mmcore.datasets import FeatureCache, image_features, image_tower_key

    device = next(model.parameters()).device
    cache = FeatureCache(cache_dir / "features", image_tower_key(model)) if cache_dir else None
    feats = image_features(model, store, cases, device, cache=cache)  # (N, F_img)
    out = []
    with torch.inference_mode():
        for start in range(0, len(feats), 256):
            chunk = feats[start : start + 256].to(device)
            out.append(model.forward_features(image_features=chunk).image_embeds.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.embed_dim), dtype=np.float32)


def auroc(scores: np.ndarray, present: np.ndarray) -> float | None:
    """AUROC of `scores` for binary `present`; None unless both classes occur."""
    from sklearn.metrics import roc_auc_score

    present = np.asarray(present, dtype=int)
    if present.min(initial=1) == present.max(initial=0):
        return None
    return float(roc_auc_score(present, scores))


def fit_findings_probe(
    model: MultimodalModel,
    store: Any,
    *,
    cache_dir: Path | None = None,
    domains: Sequence[str] = (),
    source: str = "",
    min_cases: int = MIN_CASES,
) -> FindingsProbe | None:
    """Probes of every finding with at least `min_cases` positives and negatives among the training split's cases with
    recorded findings (the training run's domains and source), with their validation AUROC; None when none qualifies."""
    filters: dict[str, Any] = {}
    if domains:
        filters["domain"] = list(domains)
    if source:
        filters["source"] = source
    train = [c for c in store.cases(split="train", **filters) if c.findings and c.image_path]
    if not train:
        return None
    y = findings_matrix(train)
    counts = {f.name: (int((y[:, k] == 1).sum()), int((y[:, k] == 0).sum())) for k, f in enumerate(FINDINGS)}
    chosen = [k for k, f in enumerate(FINDINGS) if min(counts[f.name]) >= min_cases]
    if not chosen:
        return None
    x = case_image_embeds(model, store, train, cache_dir)
    weights, bias = [], []
    for k in chosen:
        known = y[:, k] >= 0
        w, b = fit_probe(x[known], y[known, k])
        weights.append(w)
        bias.append(b)
    names = tuple(FINDINGS[k].name for k in chosen)
    probe = FindingsProbe(names, np.stack(weights), np.asarray(bias, dtype=np.float32), {}, zero_shot_directions(model))
    val = [c for c in store.cases(split="val", **filters) if c.findings and c.image_path]
    aurocs: dict[str, float | None] = {}
    if val:
        yv = findings_matrix(val)
        sv = _sigmoid(case_image_embeds(model, store, val, cache_dir) @ probe.weights.T + probe.bias)  # (M, K')
        for j, k in enumerate(chosen):
            known = yv[:, k] >= 0
            enough = min(int((yv[known, k] == 1).sum()), int((yv[known, k] == 0).sum())) >= MIN_VAL_CASES
            aurocs[FINDINGS[k].name] = auroc(sv[known, j], yv[known, k]) if enough else None
    probe.meta = {
        "method": "L2 logistic regression per finding on L2-normalised image embeddings (shared space)",
        "fitted_on": f"train split: {len(train)} cases with recorded findings",
        "n_train": len(train),
        "n_val": len(val),
        "counts": {n: {"present": counts[n][0], "absent": counts[n][1]} for n in names},
        "C": PROBE_C,
        "val_auroc": aurocs,
        "zero_shot_only": [f.name for k, f in enumerate(FINDINGS) if k not in chosen],
        "min_cases": min_cases,
    }
    return probe


def fit_findings(cfg: Config, loaded: LoadedModel) -> ModelCard | None:
    """Fit (or refit) a saved version's findings probe on its training split and store it with the version: the files
    hashed into the card, a summary in card.extra["findings"]. None (nothing written) when no training case has
    enough recorded findings. Call it when a version is completed (mmcore.register.complete_version)."""
    from mmcore.cases import CaseStore
    from mmcore.model_store import add_files, update_card

    data = loaded.card.training_data
    with CaseStore(cfg.home) as store:
        probe = fit_findings_probe(
            loaded.model, store, cache_dir=cfg.cache_dir, domains=data.train_domains, source=data.source
        )
    if probe is None:
        return None
    add_files(cfg, loaded.version, probe.save(loaded.path))
    aurocs = [v for v in probe.meta["val_auroc"].values() if v is not None]
    summary = {
        "method": probe.meta["method"],
        "fitted_on": probe.meta["fitted_on"],
        "probed": list(probe.names),
        "zero_shot_only": probe.meta["zero_shot_only"],
        "val_auroc": probe.meta["val_auroc"],
        "val_auroc_mean": round(float(np.mean(aurocs)), 4) if aurocs else None,
        "files": [WEIGHTS_FILE, META_FILE],
    }

    def change(card: ModelCard) -> None:
        card.extra["findings"] = summary

    return update_card(cfg, loaded.version, change)


def refit_findings(cfg: Config, version: str) -> ModelCard | None:
    """fit_findings for an existing version, loaded from the model store (e.g. after importing cases with findings)."""
    from mmcore.model_store import load_version

    return fit_findings(cfg, load_version(cfg, version))
