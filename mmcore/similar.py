"""Similar past cases as the pages show them: a retrieved case with its diagnosis, metadata, thumbnail and notes, and
why two cases are similar (heat maps of what drives the cosine similarity)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmcore.cases import DX_NAMES, CaseStore


class RetrievalUnavailable(ValueError):
    """No case index answers for this model version (not built yet, owned by another process, server down)."""


@dataclass(frozen=True)
class SimilarCase:
    """A retrieved case: cosine similarity `score`, diagnosis, metadata for display, the image file for a thumbnail
    (None when it is missing), and the case's notes (strategy -> text)."""

    case_id: str
    score: float
    dx: str
    name: str
    malignancy: str
    metadata: dict[str, Any]
    image_path: Path | None
    notes: dict[str, str]
    modality: str
    percentile: float | None = None  # among the library's own neighbour similarities (index.Hit.percentile)


@dataclass(frozen=True)
class SimilarityExplanation:
    """Why a case was retrieved: heat maps ((H, W) in [0, 1]) of what drives the cosine similarity on each image."""

    case_id: str
    score: float
    query_image: Image.Image | None
    query_heatmap: np.ndarray | None
    case_image: Image.Image | None
    case_heatmap: np.ndarray | None


def load_similar_cases(store: CaseStore, hits: list[Any], modality: str) -> list[SimilarCase]:
    """The cases of index hits (index.Hit), in order; a case deleted since the index was built is skipped."""
    out = []
    for hit in hits:
        case = store.get(hit.case_id, with_notes=True)
        if case is None:  # the index is older than the store: skip what was deleted
            continue
        path = store.image_path(case) if case.image_path else None
        out.append(
            SimilarCase(
                case_id=case.case_id,
                score=float(hit.score),
                percentile=hit.percentile,
                dx=case.dx,
                name=DX_NAMES.get(case.dx, case.dx),
                malignancy=case.malignancy,
                metadata={
                    "age": case.age,
                    "sex": case.sex,
                    "site": case.site,
                    "fitzpatrick": case.fitzpatrick,
                    "source": case.source,
                    "domain": case.domain,
                    "split": case.split,
                },
                image_path=path if path is not None and path.is_file() else None,
                notes=dict(case.notes),
                modality=modality,
            )
        )
    return out
