"""Findings for one Predictor's photos: the score of every finding (mmcore.concepts), the Grad-CAM of one finding's
score, and similar library cases searched by chosen findings. The scorer is built once per Predictor and kept beside
it; maps run on the Predictor's private explainer copy under its lock, like its own explanations.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from mmcore.concepts import FindingScore, FindingsScorer, build_scorer, finding
from mmcore.overlays import colorbar, overlay

if TYPE_CHECKING:
    from mmcore.case_filters import CaseFilter
    from mmcore.predictor import Predictor
    from mmcore.similar import SimilarCase

MAPS_KEPT = 32  # finding maps cached per Predictor


@dataclass(frozen=True)
class FindingMap:
    """Where a photo drives one finding's score: heatmap (H, W) in [0, 1] at the size of `image` (the upload, upright,
    as the Predictor displays it). `target` is the finding's name, as Explanation.target is a class's."""

    target: str
    method: str
    model_version: str
    image: Image.Image
    heatmap: np.ndarray

    def overlay(self, opacity: float = 0.45, colormap: str = "inferno", contour_top: float | None = 0.2) -> Image.Image:
        """The photo with the heat map blended at `opacity` and the top-`contour_top` region outlined."""
        return overlay(self.image, self.heatmap, opacity, colormap, contour_top)

    def colorbar(self, colormap: str = "inferno") -> Image.Image:
        """The legend of the overlay's colours."""
        return colorbar(colormap)


class _State:
    """What one Predictor's findings need, built once: the scorer and the last few finding maps."""

    def __init__(self, scorer: FindingsScorer) -> None:
        self.scorer = scorer
        self.maps: OrderedDict[tuple[str, str, str], FindingMap] = OrderedDict()
        self.lock = threading.Lock()


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def findings_scorer(predictor: Predictor) -> FindingsScorer:
    """The scorer of the predictor's version (its probe, hash-checked against the card, if it has one), built on first
    use and kept as long as the predictor lives."""
    with _STATES_LOCK:
        state = _STATES.get(predictor)
        if state is None:
            folder = predictor.cfg.models_dir / predictor.version
            state = _STATES[predictor] = _State(build_scorer(predictor.model, folder, predictor.card.files))
        return state.scorer


def score_findings(predictor: Predictor, image_bytes: bytes) -> list[FindingScore]:
    """A FindingScore per finding of mmcore.concepts.FINDINGS for one photo, in vocabulary order (sort by .score)."""
    embed = predictor.embed(image_bytes)["image"]  # (D,), from the tower features the prediction already computed
    return findings_scorer(predictor).explain(embed)


def explain_finding(predictor: Predictor, image_bytes: bytes, name: str, method: str = "gradcam") -> FindingMap:
    """Where the photo drives finding `name`'s score: Grad-CAM (or "ig") of the cosine similarity of its embedding with
    the finding's direction (explain_image.similarity_maps), which is the score's logit up to scale and shift."""
    from mmcore.explain_image import model_lock, similarity_maps
    from mmcore.overlays import resize_map

    scorer = findings_scorer(predictor)
    state = _STATES[predictor]
    name = finding(name).name
    image = predictor.image_input(image_bytes)
    key = (image.sha256, name, method)
    with state.lock:
        if key in state.maps:
            state.maps.move_to_end(key)
            return state.maps[key]
    direction = torch.from_numpy(scorer.direction(name)).to(predictor.device)  # (D,)
    explainer = predictor._explainer_model()  # the Predictor's private copy: Captum's hooks stay off the shared model
    with model_lock(explainer):
        heat = similarity_maps(explainer, image.tensor, direction, method)[0].cpu().numpy()  # (S, S)
    heatmap = np.ascontiguousarray(np.clip(resize_map(heat, image.display.size), 0, 1), dtype=np.float32)
    heatmap.flags.writeable = False  # cached maps are shared between sessions
    explained = FindingMap(name, method, predictor.version, image.display, heatmap)
    with state.lock:
        state.maps[key] = explained
        while len(state.maps) > MAPS_KEPT:
            state.maps.popitem(last=False)
    return explained


def findings_query_vector(predictor: Predictor, names: Sequence[str]) -> np.ndarray:
    """(D,) a unit query for the image collection: the mean of the chosen findings' unit directions, so a case ranks
    by the sum of its findings' logits (each scaled to unit direction)."""
    scorer = findings_scorer(predictor)
    chosen = [finding(n).name for n in dict.fromkeys(names)]
    if not chosen:
        raise ValueError("choose at least one finding")
    directions = [scorer.direction(n) / max(float(np.linalg.norm(scorer.direction(n))), 1e-12) for n in chosen]
    query = np.mean(directions, axis=0)
    return (query / max(float(np.linalg.norm(query)), 1e-12)).astype(np.float32)


def similar_by_findings(
    predictor: Predictor, names: Sequence[str], k: int = 8, where: CaseFilter | Mapping[str, Any] | None = None
) -> list[SimilarCase]:
    """The k library cases nearest the chosen findings' query vector in the image collection, best first, with no
    percentile (a findings direction's cosine, a few hundredths for the best match, is on no scale the library's
    image-to-image neighbours share: index.UNRANKED); RetrievalUnavailable (a ValueError) when the version has no
    index."""
    from mmcore import index
    from mmcore.cases import CaseStore
    from mmcore.similar import RetrievalUnavailable, load_similar_cases

    query = findings_query_vector(predictor, names)
    try:
        cfg, version = predictor.cfg, predictor.version
        hits = index.query(cfg, version, "image", query, k=k, where=where, query_kind=index.UNRANKED)
    except (index.IndexNotBuiltError, index.IndexLockedError, ConnectionError) as e:
        raise RetrievalUnavailable(f"Similar cases are not available: {str(e).splitlines()[0]}") from None
    with CaseStore(predictor.cfg.home) as store:
        return load_similar_cases(store, hits, "image")
