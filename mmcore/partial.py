"""Partial fine-tuning's data and extras around the training loop: which blocks train, batches of cached trunk
activations (with lesion-free outliers for outlier exposure), the outlier-exposure loss term, and the trained towers'
features written back to the feature cache once a run ends.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmcore.activation_cache import (
    ACTIVATIONS,
    ActivationCache,
    fill_feature_cache,
    image_activations,
    image_trunk_key,
    lesion_free_activations,
    text_activations,
    text_trunk_key,
)
from mmcore.cases import CaseStore
from mmcore.config import Config
from mmcore.datasets import CaseSet, FeatureCache, PartialBatches, text_features, text_tower_key
from mmcore.model import MultimodalModel, PartialModel

__all__ = ["fill_trained_features", "outlier_exposure_loss", "partial_batches", "partial_split"]


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def partial_split(cfg: Config) -> tuple[int, int]:
    """(image blocks, text layers) that train when train.finetune is "partial"."""
    return cfg.train.trainable_blocks, cfg.train.trainable_text_layers


def outlier_exposure_loss(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform || softmax) of (K, C) logits, averaged: logsumexp(z) - mean(z) - log C, 0 when uniform. The
    cross-entropy to the uniform distribution of Hendrycks et al. (2019, "Deep Anomaly Detection with Outlier
    Exposure") less its constant minimum log C: the same gradient, a term that reads 0 when it is met."""
    return (torch.logsumexp(logits, dim=-1) - logits.mean(dim=-1)).mean() - math.log(logits.shape[-1])


def partial_batches(
    cfg: Config,
    store: CaseStore,
    model: MultimodalModel,
    case_set: CaseSet,
    device: torch.device,
    train: bool,
    common: dict[str, Any],
    cache: dict[str, Any],
) -> PartialBatches:
    """Batches of cached trunk activations; the trunks run only for what the cache does not hold yet.

    Training cases get a clean view and train.augment_views augmented ones (when train.augment), validation cases
    the clean view only. The text side: each note's text-trunk states, or the frozen text tower's pooled features.
    With loss.outlier_exposure > 0, training batches also carry the trunk activations of the same photos with their
    lesion removed. What the caches cost goes into `cache` (the run's activation_cache.json).
    """
    t = cfg.train
    blocks, layers = partial_split(cfg)
    image_trunk, text_trunk = model.frozen_parts
    views = 1 + t.augment_views if train and t.augment else 1
    root = cfg.cache_dir / ACTIVATIONS
    image_cache = ActivationCache(root, image_trunk_key(model, image_trunk, blocks))
    acts, report = image_activations(
        model, image_trunk, store, case_set.cases, views, image_cache, device, num_workers=t.num_workers
    )
    split = "train" if train else "val"
    cache[f"image_{split}"] = {**dataclasses.asdict(report), "views": views, "shape": list(acts.shape[2:])}
    texts = [note or "" for s in case_set.strategies for note in case_set.notes[s]]  # (S * N,)
    text: torch.Tensor | dict[str, list[torch.Tensor]]
    if layers:
        text_cache = ActivationCache(root, text_trunk_key(model, text_trunk, layers))
        states, text_report = text_activations(model, text_trunk, texts, text_cache, device)
        n = len(case_set)
        text = {s: states[i * n : (i + 1) * n] for i, s in enumerate(case_set.strategies)}
        cache[f"text_{split}"] = dataclasses.asdict(text_report)
    else:
        feature_cache = FeatureCache(cfg.cache_dir / "features", text_tower_key(model))
        text = text_features(model, texts, device, cache=feature_cache).view(
            len(case_set.strategies), len(case_set), -1
        )
    _say(
        f"{split}: trunk activations of {len(case_set)} images x {views} view(s), shape {list(acts.shape[2:])}: "
        f"{report.computed} images computed ({report.forwards} trunk forwards) in {report.seconds:.1f} s; "
        f"{report.bytes / 1e6:.0f} MB on disk in {image_cache.dir}"
    )
    outliers = None
    weight = cfg.loss.outlier_exposure
    if train and weight > 0:
        outlier_cache = ActivationCache(root, image_cache.dir.name)
        outliers, o_report = lesion_free_activations(model, image_trunk, store, case_set.cases, outlier_cache, device)
        cache["image_lesion_free"] = dataclasses.asdict(o_report)
        _say(
            f"outlier exposure: {len(outliers)} training photos with their lesion removed ({o_report.computed} "
            f"computed in {o_report.seconds:.1f} s), weight {weight}"
        )
    return PartialBatches(case_set, acts, text, t.batch_size, train_views=views, outlier_acts=outliers, **common)


def fill_trained_features(
    cfg: Config,
    model: MultimodalModel,
    module: PartialModel,
    batch_sources: Sequence[PartialBatches | None],
    best: Path | None,
    device: torch.device,
) -> int:
    """The selected epoch's tower features of the cases of `batch_sources`, from their cached clean views through the
    trained tops, into the feature cache (keyed by the trained weights), so that the OOD fit, evaluation and
    promotion find them instead of running the towers again. `best`: the selected epoch's weights (what the
    registered version holds), None to keep the module's. Returns how many were written."""
    from mmcore.model_store import load_weights  # model_store imports the index side; only needed here

    if best is not None:
        load_weights(module, best.read_bytes())
    written = 0
    for batches in batch_sources:
        if batches is not None:
            states = None if isinstance(batches.text, torch.Tensor) else batches.text
            written += fill_feature_cache(
                model, module, batches.case_set, batches.image_acts, states, cfg.cache_dir, device
            )
    return written
