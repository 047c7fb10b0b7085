"""Evaluation of a model version: classification metrics (accuracy to ECE, confusion, calibration) per modality,
retrieval (P@k, mAP, paired R@k, the prevalence chance line) per query/gallery pairing, each per domain and
Fitzpatrick group; stored evaluations and their summary in the model card.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from mmcore.calibrate import expected_calibration_error, reliability_bins
from mmcore.cases import Case, CaseStore
from mmcore.config import Config
from mmcore.datasets import (
    FeatureCache,
    image_features,
    image_tower_key,
    load_case_set,
    text_features,
    text_tower_key,
)
from mmcore.devices import resolve_device
from mmcore.model import MultimodalModel
from mmcore.model_card import CANONICAL_EVALUATION, Evaluation, ModalityScores

if TYPE_CHECKING:
    from mmcore.model_store import LoadedModel

MODALITIES = ("image", "text", "fused")
PAIRINGS = (("image", "image"), ("image", "text"), ("text", "image"), ("text", "text"))  # (query, gallery)
PRECISION_AT = (5, 10, 20, 50)
RECALL_AT = (1, 5, 10)
FITZPATRICK_GROUPS = {"1-2": (1, 2), "3-4": (3, 4), "5-6": (5, 6)}  # and "unknown"


# ---- classification ---------------------------------------------------------------------------------------------


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the label (NaN for no cases)."""
    return float(accuracy_score(labels, preds)) if len(labels) else math.nan


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean recall over the classes present in `labels`, as the ISIC challenge scores it (NaN for no cases)."""
    if not len(labels):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from the labels
        return float(balanced_accuracy_score(labels, preds))


UNDECIDED = -1  # a case whose top score is shared by several classes


def decisions(probs: np.ndarray) -> np.ndarray:
    """(N,) the top class of each row of (N, C) scores; UNDECIDED where several classes share the top score, which
    then counts as wrong (as the ISIC challenge's scoring does: isic_challenge_scoring.metrics._to_labels)."""
    top = probs.max(1, keepdims=True)
    preds = probs.argmax(1)
    preds[(probs == top).sum(1) > 1] = UNDECIDED
    return preds


def auroc_per_class(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """One-vs-rest AUROC of each class; NaN where the class is absent (or is every case) in `labels`."""
    out = {}
    for c, name in enumerate(classes):
        positive = labels == c
        out[name] = float(roc_auc_score(positive, probs[:, c])) if 0 < positive.sum() < len(labels) else math.nan
    return out


def classification_metrics(
    labels: np.ndarray, logits: np.ndarray, classes: Sequence[str], temperature: float = 1.0
) -> dict[str, Any]:
    """Every classification metric of (N, C) logits against (N,) class indices; probabilities are the calibrated
    softmax(logits / temperature), and `ece_uncalibrated` is the ECE of the plain softmax."""
    raw = torch.as_tensor(logits, dtype=torch.float64)
    probs = torch.softmax(raw / temperature, dim=-1).numpy()  # (N, C)
    preds = decisions(probs)
    kappa = math.nan
    if len(labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kappa of a one-class sample is 0/0: NaN, reported as such
            # Unweighted: diagnoses have no order, so a quadratic weighting over class indices would be meaningless.
            kappa = float(cohen_kappa_score(labels, preds, labels=list(range(len(classes)))))
    ece = expected_calibration_error(probs, labels) if len(labels) else math.nan
    bins = reliability_bins(probs, labels)
    auroc = auroc_per_class(labels, probs, classes)
    present = [v for v in auroc.values() if not math.isnan(v)]
    return {
        "n": len(labels),
        "accuracy": accuracy(labels, preds),
        "balanced_accuracy": balanced_accuracy(labels, preds),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)) if len(labels) else math.nan,
        "kappa": kappa,
        "auroc": auroc,
        "auroc_macro": float(np.mean(present)) if present else math.nan,
        "ece": ece,
        "ece_uncalibrated": (
            expected_calibration_error(torch.softmax(raw, dim=-1).numpy(), labels)
            if temperature != 1.0 and len(labels)
            else ece
        ),
        "temperature": temperature,
        "calibration": bins,
        "confusion": confusion_matrix(labels, preds, labels=list(range(len(classes)))).tolist(),  # rows: truth
    }


# ---- retrieval --------------------------------------------------------------------------------------------------


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    query_index: np.ndarray,
    same_modality: bool,
) -> dict[str, float]:
    """P@k and mAP (hit: same class) and, across modalities, paired R@k (hit: the query's own pair only).

    queries (Q, D) and gallery (G, D) are L2-normalised, so the dot product is the cosine similarity.
    query_index (Q,): each query's own case in the gallery; within one modality that case is the query itself and
    is left out of the ranking, across modalities it is the query's pair.
    """
    sims = queries @ gallery.T  # (Q, G)
    order = np.argsort(-sims, axis=1, kind="stable")  # (Q, G) gallery indices, most similar first
    own = order == query_index[:, None]  # (Q, G) where each query's own case sits in its ranking
    if same_modality:
        order = order[~own].reshape(len(queries), -1)  # (Q, G - 1): the query itself is no answer
    hits = gallery_labels[order] == query_labels[:, None]  # (Q, G')
    # Chance for P@k is what a random ranking scores: the share of same-class cases in each query's gallery (the
    # class prevalence, about 0.48 with HAM-like frequencies), not the 1/C of a classifier.
    out: dict[str, float] = {"chance": float(hits.mean()) if hits.size else math.nan}
    for k in PRECISION_AT:
        kk = min(k, hits.shape[1])
        out[f"P@{k}"] = float(hits[:, :kk].mean()) if kk and len(hits) else math.nan
    ranks = np.arange(1, hits.shape[1] + 1)  # (G',)
    precision_at_hit = np.cumsum(hits, axis=1) / ranks  # (Q, G')
    n_hits = hits.sum(1)  # (Q,)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision_at_hit * hits).sum(1) / n_hits  # (Q,) NaN for a query with no same-class case
    out["mAP"] = float(np.nanmean(ap)) if np.any(n_hits) else math.nan
    if not same_modality:
        pair_rank = own.argmax(1)  # (Q,) 0-based rank of the pair
        for k in RECALL_AT:
            out[f"R@{k}"] = float(np.mean(pair_rank < k)) if len(queries) else math.nan
    return out


# ---- the model's outputs on cases ---------------------------------------------------------------------------------


@dataclass
class CaseOutputs:
    """What the model gives for N cases: logits (N, C) per modality and shared embeddings (N, D)."""

    case_ids: list[str]
    labels: np.ndarray  # (N,) index into the model's classes
    image_logits: np.ndarray
    text_logits: np.ndarray
    fused_logits: np.ndarray
    image_embeds: np.ndarray
    text_embeds: np.ndarray

    def logits(self, modality: str) -> np.ndarray:
        return getattr(self, f"{modality}_logits")

    def embeds(self, modality: str) -> np.ndarray:
        return getattr(self, f"{modality}_embeds")


def notes_of(cases: Sequence[Case], strategy: str) -> list[str]:
    """Each case's note of `strategy`; a case without one is an error naming how many lack it."""
    missing = [c.case_id for c in cases if not c.notes.get(strategy)]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(cases)} cases have no {strategy!r} note (e.g. {missing[0]}); generate them with "
            f"`python -m mmcore notes generate --strategy {strategy}`"
        )
    return [c.notes[strategy] for c in cases]


@torch.inference_mode()
def case_outputs(
    model: MultimodalModel,
    store: CaseStore,
    cases: Sequence[Case],
    text_strategy: str,
    device: torch.device,
    batch_size: int = 64,
    cache_dir: Path | None = None,
) -> CaseOutputs:
    """Run the model on the cases' images and `text_strategy` notes (towers, then heads, in batches).

    cache_dir: the feature cache of a model whose towers are frozen pretrained ones (features computed once).
    """
    model.eval()
    texts = notes_of(cases, text_strategy)
    image_cache = FeatureCache(cache_dir / "features", image_tower_key(model)) if cache_dir else None
    text_cache = FeatureCache(cache_dir / "features", text_tower_key(model)) if cache_dir else None
    image_feats = image_features(model, store, cases, device, batch_size, image_cache)  # (N, F_img)
    text_feats = text_features(model, texts, device, batch_size, text_cache)  # (N, F_txt)
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("image_logits", "text_logits", "fused_logits", "image_embeds", "text_embeds")
    }
    for start in range(0, len(cases), batch_size):
        out = model.forward_features(
            image_feats[start : start + batch_size].to(device), text_feats[start : start + batch_size].to(device)
        )
        for key, chunk in parts.items():
            chunk.append(getattr(out, key).float().cpu())
    index = {c: i for i, c in enumerate(model.classes)}
    return CaseOutputs(
        case_ids=[c.case_id for c in cases],
        labels=np.array([index.get(c.dx, -1) for c in cases], dtype=np.int64),
        **{k: torch.cat(v).numpy() if v else np.zeros((0, 0), np.float32) for k, v in parts.items()},
    )


def embedding_map(outputs: CaseOutputs, cases: Sequence[Case]) -> dict[str, Any]:
    """A 2-D PCA of the image and text embeddings together, with dx, domain and modality per point."""
    vectors = np.concatenate([outputs.image_embeds, outputs.text_embeds])  # (2N, D)
    pca = PCA(n_components=min(2, *vectors.shape))
    xy = np.zeros((len(vectors), 2))
    xy[:, : pca.n_components] = pca.fit_transform(vectors)  # (2N, 2)
    variance = np.zeros(2)
    variance[: pca.n_components] = pca.explained_variance_ratio_
    return {
        "x": xy[:, 0].round(5).tolist(),
        "y": xy[:, 1].round(5).tolist(),
        "modality": ["image"] * len(cases) + ["text"] * len(cases),
        "dx": [c.dx for c in cases] * 2,
        "domain": [c.domain for c in cases] * 2,
        "case_id": [c.case_id for c in cases] * 2,
        "explained_variance": variance.round(5).tolist(),
    }


# ---- the whole evaluation ---------------------------------------------------------------------------------------


def fitzpatrick_group(value: int | None) -> str:
    """The Fitzpatrick group of a skin type: 1-2, 3-4, 5-6 or unknown."""
    for name, types in FITZPATRICK_GROUPS.items():
        if value in types:
            return name
    return "unknown"


def _metrics_of(
    outputs: CaseOutputs, mask: np.ndarray, classes: Sequence[str], temperatures: dict[str, float]
) -> dict[str, Any]:
    labels = outputs.labels[mask]
    result: dict[str, Any] = {"n": int(mask.sum())}
    result["classification"] = {
        m: classification_metrics(labels, outputs.logits(m)[mask], classes, temperatures.get(m, 1.0))
        for m in MODALITIES
    }
    # Queries from this group; the gallery is every evaluated case, as the deployed index holds them all.
    queries = np.flatnonzero(mask)
    result["retrieval"] = {
        f"{q}_to_{g}": retrieval_metrics(
            outputs.embeds(q)[queries], labels, outputs.embeds(g), outputs.labels, queries, same_modality=q == g
        )
        for q, g in PAIRINGS
    }
    return result


def evaluate_outputs(
    outputs: CaseOutputs, cases: Sequence[Case], classes: Sequence[str], temperatures: dict[str, float] | None = None
) -> dict[str, Any]:
    """All metrics, overall, per domain and per Fitzpatrick group, plus the embedding map and baselines.

    temperatures: modality -> the version's calibration temperature (scores are reported calibrated).
    """
    t = temperatures or {}
    everyone = np.ones(len(cases), dtype=bool)
    result = _metrics_of(outputs, everyone, classes, t)
    domains = np.array([c.domain or "(none)" for c in cases])
    groups = np.array([fitzpatrick_group(c.fitzpatrick) for c in cases])
    result["by_domain"] = {d: _metrics_of(outputs, domains == d, classes, t) for d in sorted(set(domains))}
    result["by_fitzpatrick"] = {
        g: _metrics_of(outputs, groups == g, classes, t)
        for g in (*FITZPATRICK_GROUPS, "unknown")
        if (groups == g).any()
    }
    counts = Counter(outputs.labels.tolist())
    result["baselines"] = {
        "chance": 1 / len(classes),
        "majority_class": classes[counts.most_common(1)[0][0]] if counts else None,
        "majority_rate": counts.most_common(1)[0][1] / len(cases) if counts else math.nan,
    }
    result["embedding_map"] = embedding_map(outputs, cases)
    return result


def select_cases(
    store: CaseStore, split: str, classes: Sequence[str], text_strategy: str, limit: int = 0
) -> tuple[list[Case], dict[str, int]]:
    """The split's cases a model with `classes` can be scored on, having a `text_strategy` note; and the skipped."""
    case_set = load_case_set(store, split, classes, (text_strategy,))
    cases, skipped = case_set.cases, dict(case_set.skipped)
    if limit and len(cases) > limit:
        skipped[f"over --limit {limit}"] = len(cases) - limit
        cases = cases[:limit]
    return cases, skipped


def json_safe(value: Any) -> Any:
    """NaN and infinities as null (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def run_evaluation(
    cfg: Config,
    version: str | None = None,
    split: str = "test",
    text_strategy: str = "clinical",
    limit: int = 0,
    loaded: LoadedModel | None = None,
) -> dict[str, Any]:
    """Evaluate a version (None: the active one) on `split` with `text_strategy` notes; store the results with it.

    Results go to `<models_dir>/<version>/eval_<split>_<strategy>.json` and, summarised, into the model card's
    evaluations. Scores are the calibrated ones when the version carries a calibration. `loaded`: the version
    already loaded by the caller.
    """
    from mmcore.model_store import load_version, update_card

    loaded = loaded or load_version(cfg, version, device=resolve_device(cfg.runtime.device))
    model = loaded.model
    device = next(model.parameters()).device
    frozen = loaded.card.training.finetune == "heads"
    temperatures = dict(loaded.card.calibration.get("temperatures") or {})
    started = time.perf_counter()
    with CaseStore(cfg.home) as store:
        cases, skipped = select_cases(store, split, model.classes, text_strategy, limit)
        if not cases:
            raise ValueError(f"no {split} cases with a {text_strategy!r} note and a dx among {list(model.classes)}")
        outputs = case_outputs(model, store, cases, text_strategy, device, cache_dir=cfg.cache_dir if frozen else None)
    result = evaluate_outputs(outputs, cases, model.classes, temperatures)
    name = f"{split}_{text_strategy}"
    result = {
        "version": loaded.version,
        "split": split,
        "text_strategy": text_strategy,
        "classes": list(model.classes),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result,
    }
    result = json_safe(result)
    path = loaded.path / f"eval_{name}.json"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, path)
    summary = card_summary(result, path.name)
    update_card(cfg, loaded.version, lambda card: card.evaluations.__setitem__(name, summary))
    return result


def card_summary(result: dict[str, Any], file: str = "") -> Evaluation:
    """What the model card keeps of an evaluation: scores per modality and mAP per pairing."""
    modalities = {}
    for m in MODALITIES:
        c = result["classification"][m]
        modalities[m] = ModalityScores(
            **{k: c.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "kappa", "auroc_macro", "ece")},
            ece_uncalibrated=c.get("ece_uncalibrated"),
        )
    return Evaluation(
        split=result["split"],
        text_strategy=result["text_strategy"],
        n=result["n"],
        created=result["created"],
        file=file,
        modalities=modalities,
        retrieval_map={pairing: r.get("mAP") for pairing, r in result["retrieval"].items()},
        skipped=dict(result.get("skipped") or {}),
    )


def read_evaluations(cfg: Config, version: str) -> dict[str, dict[str, Any]]:
    """name ("test_clinical") -> each stored evaluation of a version: test_clinical first, then newest first."""
    from mmcore.model_store import version_dir

    files = sorted(version_dir(cfg, version).glob("eval_*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    files.sort(key=lambda p: p.stem != f"eval_{CANONICAL_EVALUATION}")  # stable: the rest stay newest first
    out = {}
    for path in files:
        try:
            out[path.stem.removeprefix("eval_")] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # gone or replaced since the listing; the next read has it
    return out


def summary_text(result: dict[str, Any]) -> str:
    """A few lines for the terminal: per-modality classification, retrieval, baselines."""
    lines = [f"{result['version']} on {result['split']} ({result['n']} cases, {result['text_strategy']} notes)"]
    for m in MODALITIES:
        c = result["classification"][m]
        lines.append(
            f"  {m:<6} accuracy {_f(c['accuracy'])}  balanced {_f(c['balanced_accuracy'])}  macro-F1 "
            f"{_f(c['macro_f1'])}  kappa {_f(c['kappa'])}  AUROC {_f(c['auroc_macro'])}  ECE {_f(c['ece'])}"
        )
    for pairing, r in result["retrieval"].items():
        recall = "  ".join(f"{k} {_f(v)}" for k, v in r.items() if k.startswith("R@"))
        lines.append(f"  {pairing:<14} P@10 {_f(r['P@10'])}  mAP {_f(r['mAP'])}  {recall}".rstrip())
    b = result["baselines"]
    lines.append(f"  chance {_f(b['chance'])}  majority ({b['majority_class']}) {_f(b['majority_rate'])}")
    for group in ("by_domain", "by_fitzpatrick"):
        cells = ", ".join(
            f"{k} {_f(v['classification']['fused']['balanced_accuracy'])} (n={v['n']})"
            for k, v in result[group].items()
        )
        lines.append(f"  fused balanced accuracy {group.replace('_', ' ')}: {cells}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
