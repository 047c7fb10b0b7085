"""Exact nearest-neighbour search over unit vectors with NumPy: a collection's snapshot in memory (vectors, metadata
columns for filters, hit metadata), the search itself, and the library's own neighbour similarities that a hit's
percentile is measured against. mmcore.index keeps these in step with its Chroma collections.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcore.case_filters import METADATA_FIELDS, NUMBER_FIELDS

PAGE = 5000  # rows per `get` when a snapshot loads a collection


def normalise(vector: np.ndarray) -> np.ndarray:
    """Unit-length float32 copy of a vector (D,) or of each row of (N, D)."""
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim == 1:  # one query: a dot product, not linalg.norm's generic machinery (a tenth of a query's cost)
        norm = math.sqrt(float(np.dot(v, v)))  # NaN or inf (also from overflow) for a vector we cannot normalise
        if not (norm > 0 and math.isfinite(norm)):
            raise ValueError("cannot normalise a zero or non-finite vector")
        return v / np.float32(norm)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    if not np.all(np.isfinite(v)) or np.any(norms == 0):
        raise ValueError("cannot normalise a zero or non-finite vector")
    return v / norms


def exact_search(
    query: np.ndarray, vectors: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the k rows of unit `vectors` (N, D) nearest `query`, best first.

    `query` is (D,) for one query, giving (k,) arrays, or (Q, D) for a batch, giving (Q, k) arrays. Rows where
    `mask` (N,) is False are never returned, so fewer than k come back when fewer pass.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    if q.ndim == 1:
        return _search_one(q, vectors, k, mask)
    scores = q @ vectors.T  # (Q, N)
    rows = None
    if mask is not None:  # rank only the rows the filter keeps (masking with -inf makes argpartition crawl)
        rows = np.flatnonzero(mask)
        scores = scores[:, rows]
    k = max(0, min(k, scores.shape[1]))
    part = np.argpartition(scores, -k, axis=1)[:, -k:] if k else np.zeros((len(q), 0), np.intp)  # (Q, k), unordered
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, sims = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
    return (idx, sims) if rows is None else (rows[idx], sims)


def _search_one(q: np.ndarray, vectors: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """exact_search for one query (D,): 1-D indexing throughout (take_along_axis cost a third of a 10k-row query)."""
    # einsum runs on this thread. A BLAS matvec waits on its worker threads, which a busy 2-core machine often
    # deschedules: 100k x 128 took 16 ms that way against 6 ms here, at load average 6.
    scores = np.einsum("nd,d->n", vectors, q)  # (N,)
    rows = None
    if mask is not None:
        rows = np.flatnonzero(mask)
        scores = scores[rows]
    k = max(0, min(k, len(scores)))
    part = np.argpartition(scores, -k)[-k:] if 0 < k < len(scores) else np.arange(k)  # (k,), unordered
    top = scores[part]
    order = np.argsort(-top, kind="stable")
    idx, sims = part[order], top[order]
    return (idx, sims) if rows is None else (rows[idx], sims)


@dataclass
class Snapshot:
    """A collection's vectors and metadata in memory, for the exact path."""

    collection_id: str
    ids: list[str]
    vectors: np.ndarray  # (N, D) float32, unit rows
    fields: list[dict[str, Any]]  # per row: every METADATA_FIELDS key, None where unknown (what a hit carries)
    columns: dict[str, np.ndarray]  # field -> (N,): float64 for numbers (NaN unknown), else int32 codes (-1 unknown)
    vocab: dict[str, dict[str, int]]  # text field -> value -> code
    checked_at: float
    # query kind ("image", "text", "both") -> sorted similarities of library queries of that kind to their nearest
    # other cases in this collection: what "near" means here (a note is never as close to a photo as a photo)
    references: dict[str, np.ndarray] = field(default_factory=dict)

    def percentiles(self, sims: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Where similarities fall among the library's own neighbour similarities, in percent."""
        if not len(reference):
            return np.full(len(sims), np.nan)
        return 100.0 * np.searchsorted(reference, sims, side="right") / len(reference)

    @classmethod
    def load(cls, collection: Any) -> Snapshot:
        """Every row of a Chroma collection, read a PAGE at a time."""
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        metadatas: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = collection.get(include=["embeddings", "metadatas"], limit=PAGE, offset=offset)
            if not page["ids"]:
                break
            ids += page["ids"]
            chunks.append(np.asarray(page["embeddings"], dtype=np.float32))
            metadatas += [dict(m or {}) for m in page["metadatas"]]
            offset += len(page["ids"])
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
        columns: dict[str, np.ndarray] = {}
        vocab: dict[str, dict[str, int]] = {}
        for f in METADATA_FIELDS:
            values = [m.get(f) for m in metadatas]
            if f in NUMBER_FIELDS:
                columns[f] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            else:  # codes make a filter an integer comparison instead of one string comparison per row
                vocab[f] = {v: i for i, v in enumerate(sorted({v for v in values if v is not None}))}
                columns[f] = np.array([vocab[f].get(v, -1) for v in values], dtype=np.int32)
        fields = [{f: m.get(f) for f in METADATA_FIELDS} for m in metadatas]  # once here, not once per hit
        return cls(str(collection.id), ids, vectors, fields, columns, vocab, time.monotonic())


def neighbour_similarities(
    vectors: np.ndarray,
    k: int = 8,
    sample: int = 1000,
    seed: int = 0,
    queries: np.ndarray | None = None,
    own: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted cosine similarities of up to `sample` library queries to their k nearest other cases in `vectors`: what
    "near" means in this library (a hit's percentile is measured against it).

    queries: (M, D) query vectors of library cases (default: `vectors` themselves); own: (M,) each query's own row in
    `vectors`, left out like a case is not its own neighbour.
    """
    if queries is None:
        queries, own = vectors, np.arange(len(vectors))
    n, m = len(vectors), len(queries)
    if n < 2 or m == 0:
        return np.zeros(0, dtype=np.float32)
    rows = np.random.default_rng(seed).choice(m, size=min(sample, m), replace=False)
    sims = queries[rows] @ vectors.T  # (S, N)
    sims[np.arange(len(rows)), np.asarray(own)[rows]] = -np.inf  # a case is not its own neighbour
    kk = min(k, n - 1)
    top = np.partition(sims, -kk, axis=1)[:, -kk:]  # (S, kk)
    return np.sort(top.ravel())
