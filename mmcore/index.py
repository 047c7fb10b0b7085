"""The case index: Chroma collections of case embeddings (one per model version and modality) with metadata filters,
built from the case store's embeddings, searched exactly with NumPy (default) or by HNSW. One process owns a local
index (file lock); others hand vectors to the case store, or all share a Chroma server (MMDERM_CHROMA_URL).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import chromadb
import filelock
import numpy as np
from chromadb.config import Settings
from chromadb.errors import NotFoundError

from mmcore.case_filters import (
    METADATA_FIELDS,
    NUMBER_FIELDS,
    Condition,
    chroma_where,
    filter_mask,
    parse_filters,
)
from mmcore.cases import Case, CaseStore
from mmcore.config import Config, IndexConfig

MODALITIES = ("image", "text")
SEARCH_MODES = ("exact", "hnsw")
# Chosen in bench/results/retrieval.md: up to 100k cases of dim 128 on 2 cores, exact NumPy search is both
# exact and faster per query than Chroma's HNSW at any setting that reaches recall@10 >= 0.99.
RERANK_FACTOR = 4  # hnsw + exact_rerank: fetch k * RERANK_FACTOR candidates, re-score them exactly
LOCK_TIMEOUT_S = 0.5
SNAPSHOT_TTL_S = 5.0  # how often the exact path checks whether the collection changed under it (other replicas)
_PAGE = 5000  # rows per `get` when the exact path loads a collection


def _chroma_settings() -> Settings:
    """Fresh settings per client: chromadb's HttpClient rewrites the Settings object it is given in place, so a
    shared one would turn every later PersistentClient into an HTTP client."""
    return Settings(anonymized_telemetry=False)


# Metadata kept per case. Unknown values (age, sex or Fitzpatrick type None, domain or split "") are left out,
# because Chroma metadata cannot hold None: a filter on a field therefore never matches a case whose value is
# unknown (an age range never admits a case of unknown age). Hits give unknowns back as None. The site
# vocabulary has its own value "unknown", which is stored and filterable like any other site.


class IndexLockedError(RuntimeError):
    """Another process (or another CaseIndex in this one) owns the local index directory."""


class IndexNotBuiltError(LookupError):
    """No collection exists for this model version and modality."""


@dataclass(frozen=True)
class Hit:
    """One retrieved case, best first in a result list."""

    case_id: str
    score: float  # cosine similarity
    distance: float  # Chroma's cosine distance, 1 - score
    metadata: dict[str, Any]  # every METADATA_FIELDS key; None where unknown
    # Share of the library's own neighbour similarities at or below `score` (0-100): the raw cosine sits in a narrow
    # band for everything, so it says little; this separates near from far. None where not computed (HNSW).
    percentile: float | None = None


# ---- names, metadata, vectors ----


def collection_name(version: str, modality: str) -> str:
    """`cases__<version>__<modality>`, with the version reduced to Chroma's name rules (plus a hash if changed)."""
    if not version:
        raise ValueError("model version is empty")
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", version)[:200]  # no dots: Chroma refuses ".." in names
    if safe != version:  # keep "v1.0" and "v1-0" apart
        safe = f"{safe}-{hashlib.sha256(version.encode()).hexdigest()[:8]}"
    return f"cases__{safe}__{modality}"


def case_metadata(case: Case) -> dict[str, str | int | float]:
    """The Chroma metadata of a case: METADATA_FIELDS with unknown values left out."""
    values: dict[str, Any] = {f: getattr(case, f) for f in METADATA_FIELDS}
    if case.age is not None:
        values["age"] = float(case.age)  # one type per field, as the case schema has it
    return {k: v for k, v in values.items() if v is not None and v != ""}


def normalise(vector: np.ndarray) -> np.ndarray:
    """Unit-length float32 copy of a vector (D,) or of each row of (N, D)."""
    v = np.asarray(vector, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    if not np.all(np.isfinite(v)) or np.any(norms == 0):
        raise ValueError("cannot normalise a zero or non-finite vector")
    return v / norms


def combine_queries(
    image: np.ndarray | None = None, text: np.ndarray | None = None, image_weight: float = 0.5
) -> np.ndarray:
    """One query vector: w * image + (1 - w) * text over the normalised vectors, renormalised."""
    if image is None and text is None:
        raise ValueError("a query needs an image vector, a text vector or both")
    if image is None or text is None:
        return normalise(image if text is None else text)
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight {image_weight} is not between 0 and 1")
    return normalise(image_weight * normalise(image) + (1.0 - image_weight) * normalise(text))


def exact_search(
    query: np.ndarray, vectors: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the k rows of unit `vectors` (N, D) nearest `query`, best first.

    `query` is (D,) for one query, giving (k,) arrays, or (Q, D) for a batch, giving (Q, k) arrays. Rows where
    `mask` (N,) is False are never returned, so fewer than k come back when fewer pass.
    """
    q = np.atleast_2d(np.asarray(query, dtype=np.float32))  # (Q, D)
    vectors = np.asarray(vectors, dtype=np.float32)
    # One query: einsum runs on this thread. A BLAS matvec waits on its worker threads, which a busy 2-core
    # machine often deschedules: 100k x 128 took 16 ms that way against 6 ms here, at load average 6.
    scores = np.einsum("nd,d->n", vectors, q[0])[None] if len(q) == 1 else q @ vectors.T  # (Q, N)
    rows = None
    if mask is not None:  # rank only the rows the filter keeps (masking with -inf makes argpartition crawl)
        rows = np.flatnonzero(mask)
        scores = scores[:, rows]
    k = max(0, min(k, scores.shape[1]))
    part = np.argpartition(scores, -k, axis=1)[:, -k:] if k else np.zeros((len(q), 0), np.intp)  # (Q, k), unordered
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, sims = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
    if rows is not None:
        idx = rows[idx]
    return (idx[0], sims[0]) if np.ndim(query) == 1 else (idx, sims)


# ---- the index ----


@dataclass
class _Snapshot:
    """A collection's vectors and metadata in memory, for the exact path."""

    collection_id: str
    ids: list[str]
    vectors: np.ndarray  # (N, D) float32, unit rows
    metadatas: list[dict[str, Any]]
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
    def load(cls, collection: Any) -> _Snapshot:
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        metadatas: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = collection.get(include=["embeddings", "metadatas"], limit=_PAGE, offset=offset)
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
        return cls(str(collection.id), ids, vectors, metadatas, columns, vocab, time.monotonic())


class CaseIndex:
    """Case embeddings in Chroma: a local PersistentClient directory that this object owns, or a Chroma server.

    A local directory is safe for one process only, so the owner holds a file lock on it for its lifetime; any
    other process gets IndexLockedError and should hand its vectors to the case store (the index is rebuilt
    from there) or talk to a Chroma server (`chroma run --path DIR`, then MMDERM_CHROMA_URL), which is how
    several app replicas share one case library.
    """

    def __init__(
        self,
        path: str | Path,
        settings: IndexConfig | None = None,
        *,
        search: str | None = None,
        rerank_factor: int = RERANK_FACTOR,
    ) -> None:
        self.settings = settings or IndexConfig()
        # IndexConfig has no `search` field yet; when it gains one, that value is used.
        self.search_mode = search or self.settings.search
        if self.search_mode not in SEARCH_MODES:
            raise ValueError(f"search {self.search_mode!r} is not one of {', '.join(SEARCH_MODES)}")
        self.rerank_factor = rerank_factor
        self.path = Path(path)
        self._lock: filelock.BaseFileLock | None = None
        self._mutex = threading.RLock()
        self._collections: dict[str, Any] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        if self.settings.chroma_url:
            self.location = self.settings.chroma_url
            self._client = _http_client(self.settings.chroma_url)
        else:
            self.location = str(self.path)
            self._lock = _own(self.path)
            self._client = chromadb.PersistentClient(path=str(self.path), settings=_chroma_settings())

    @classmethod
    def from_config(cls, cfg: Config) -> CaseIndex:
        """The index under cfg.index_dir, or the Chroma server at cfg.index.chroma_url when it is set."""
        return cls(cfg.index_dir, cfg.index)

    def close(self) -> None:
        """Release the directory lock (a local index) and forget cached collections."""
        self._collections.clear()
        self._snapshots.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> CaseIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --

    def build(
        self,
        version: str,
        store: CaseStore,
        modalities: Sequence[str] = MODALITIES,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """Bring the collections of a version in line with the case store's embeddings; returns counts per modality.

        Existing collections are kept (upsert, then ids no longer in the store are deleted); missing ones are
        created; a modality with no stored embeddings has its collection dropped. Use rebuild() to apply changed
        ef_construction / max_neighbors.
        """
        return self._fill(version, store, modalities, progress, drop=False)

    def rebuild(
        self,
        version: str,
        store: CaseStore,
        modalities: Sequence[str] = MODALITIES,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """Drop the version's collections and create them again from the case store."""
        return self._fill(version, store, modalities, progress, drop=True)

    def _fill(
        self,
        version: str,
        store: CaseStore,
        modalities: Sequence[str],
        progress: Callable[[int], None] | None,
        drop: bool,
    ) -> dict[str, int]:
        cases = {c.case_id: c for c in store.cases()}
        counts: dict[str, int] = {}
        with self._mutex:
            for modality in modalities:
                ids, vectors = store.get_embeddings(version, modality)
                keep = [i for i, cid in enumerate(ids) if cid in cases]
                ids = [ids[i] for i in keep]
                counts[modality] = len(ids)
                if drop or not ids:
                    self.drop(version, [modality])
                if not ids:
                    continue
                col = self._create(version, modality)
                stale = sorted(set(col.get(include=[])["ids"]) - set(ids))  # cases gone from the store
                for start in range(0, len(stale), self._batch_size()):
                    col.delete(ids=stale[start : start + self._batch_size()])
                self.upsert(version, modality, [cases[c] for c in ids], vectors[keep], progress=progress)
        return counts

    def upsert(
        self,
        version: str,
        modality: str,
        cases: Sequence[Case],
        vectors: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Add or replace cases with their vectors (N, D); the collection is created when missing.

        `progress`, when given, is called with the number of cases written by each batch.
        """
        vectors = normalise(np.atleast_2d(vectors))
        if len(cases) != len(vectors):
            raise ValueError(f"{len(cases)} cases but {len(vectors)} vectors")
        with self._mutex:
            col = self._create(version, modality)
            batch = self._batch_size()
            for start in range(0, len(cases), batch):
                chunk = cases[start : start + batch]
                col.upsert(
                    ids=[c.case_id for c in chunk],
                    embeddings=vectors[start : start + batch],
                    metadatas=[case_metadata(c) for c in chunk],
                )
                if progress:
                    progress(len(chunk))
            self._snapshots.pop(col.name, None)
        return len(cases)

    def drop(self, version: str, modalities: Sequence[str] = MODALITIES) -> None:
        """Delete the version's collections (no error when they do not exist)."""
        with self._mutex:
            for modality in modalities:
                name = collection_name(version, modality)
                self._collections.pop(name, None)
                self._snapshots.pop(name, None)
                with contextlib.suppress(NotFoundError):
                    self._client.delete_collection(name)

    def _batch_size(self) -> int:
        return min(self._client.get_max_batch_size(), 5000)

    def _create(self, version: str, modality: str) -> Any:
        name = collection_name(version, modality)
        if name not in self._collections:
            s = self.settings
            hnsw = {"space": "cosine", "ef_construction": s.ef_construction, "ef_search": s.ef_search,
                    "max_neighbors": s.max_neighbors}  # fmt: skip
            # embedding_function=None: never Chroma's default, which downloads a model; we pass our own vectors.
            meta = {"model_version": version, "modality": modality}
            get = self._client.get_or_create_collection
            self._collections[name] = get(name, embedding_function=None, configuration={"hnsw": hnsw}, metadata=meta)
            self._sync_ef_search(self._collections[name])
        return self._collections[name]

    # -- reading --

    def _collection(self, version: str, modality: str, fresh: bool = False) -> Any:
        name = collection_name(version, modality)
        if fresh or name not in self._collections:
            try:
                col = self._client.get_collection(name, embedding_function=None)
            except NotFoundError:
                self._collections.pop(name, None)
                raise IndexNotBuiltError(f"no {modality} index for model {version!r}: build it first") from None
            self._sync_ef_search(col)
            self._collections[name] = col
        return self._collections[name]

    def _sync_ef_search(self, col: Any) -> None:
        # ef_search is the one HNSW setting Chroma lets a collection change; it applies when the index is next
        # loaded (a fresh process or server). ef_construction and max_neighbors need rebuild().
        hnsw = (col.configuration or {}).get("hnsw") or {}
        if hnsw.get("ef_search") not in (None, self.settings.ef_search):
            col.modify(configuration={"hnsw": {"ef_search": self.settings.ef_search}})

    def counts(self, version: str) -> dict[str, int]:
        """Cases indexed per modality for a version (0 where no collection exists)."""
        out = {}
        for modality in MODALITIES:
            try:
                out[modality] = self._collection(version, modality, fresh=True).count()
            except IndexNotBuiltError:
                out[modality] = 0
        return out

    def vector(self, version: str, modality: str, case_id: str) -> np.ndarray | None:
        """The stored unit vector (D,) of one case, or None when the case is not indexed."""
        got = self._collection(version, modality).get(ids=[case_id], include=["embeddings"])
        return np.asarray(got["embeddings"][0], dtype=np.float32) if got["ids"] else None

    def query(
        self,
        version: str,
        *,
        image: np.ndarray | None = None,
        text: np.ndarray | None = None,
        modality: str = "image",
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        image_weight: float = 0.5,
    ) -> list[Hit]:
        """The k cases of `modality`'s collection nearest an image vector, a text vector or both, best first.

        Both are combined as w * image + (1 - w) * text (combine_queries). Image and text share one space, so a
        text vector searched in the image collection (or the reverse) is a cross-modal query.
        """
        return self.search(version, combine_queries(image, text, image_weight), modality=modality, k=k, where=where)

    def search(
        self,
        version: str,
        vector: np.ndarray,
        *,
        modality: str = "image",
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        query_kind: str | None = None,
    ) -> list[Hit]:
        """The k cases of `modality`'s collection nearest one query vector (D,), best first (`where`: parse_filters).

        query_kind: what the vector is ("image", "text" or "both"; default `modality`), so that each hit's percentile
        is measured against library queries of the same kind.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = normalise(vector)
        conditions = parse_filters(where)
        if self.search_mode == "exact":
            return self._query_exact(version, modality, q, k, conditions, query_kind or modality)
        try:
            return self._query_hnsw(self._collection(version, modality), q, k, conditions)
        except NotFoundError:  # another replica rebuilt it under us: look it up again once
            return self._query_hnsw(self._collection(version, modality, fresh=True), q, k, conditions)

    def _query_hnsw(self, col: Any, q: np.ndarray, k: int, conditions: Sequence[Condition]) -> list[Hit]:
        rerank = self.settings.exact_rerank
        include = ["metadatas", "distances", *(["embeddings"] if rerank else [])]
        n = k * self.rerank_factor if rerank else k
        res = col.query(query_embeddings=q[None], n_results=n, where=chroma_where(conditions), include=include)
        ids, metadatas = res["ids"][0], res["metadatas"][0]
        if not ids:
            return []
        if rerank:  # exact cosine over the candidates (re-rank as in two-stage ANN search)
            order, sims = exact_search(q, np.asarray(res["embeddings"][0], dtype=np.float32), k)
        else:
            order, sims = np.arange(min(k, len(ids))), 1.0 - np.asarray(res["distances"][0][:k], dtype=np.float32)
        return [_hit(ids[i], float(s), metadatas[i]) for i, s in zip(order, sims, strict=True)]

    def _query_exact(
        self,
        version: str,
        modality: str,
        q: np.ndarray,
        k: int,
        conditions: Sequence[Condition],
        query_kind: str = "",
    ) -> list[Hit]:
        snap = self._snapshot(version, modality)
        if not snap.ids:
            return []
        if snap.vectors.shape[1] != q.shape[0]:
            raise ValueError(f"query has {q.shape[0]} dimensions, the {modality} index has {snap.vectors.shape[1]}")
        order, sims = exact_search(
            q, snap.vectors, k, filter_mask(conditions, snap.columns, snap.vocab) if conditions else None
        )
        ranks = snap.percentiles(sims, self._reference(version, modality, query_kind or modality, snap))
        return [
            _hit(snap.ids[i], float(s), snap.metadatas[i], float(r)) for i, s, r in zip(order, sims, ranks, strict=True)
        ]

    def _reference(self, version: str, modality: str, query_kind: str, snap: _Snapshot) -> np.ndarray:
        """Library neighbour similarities of queries of `query_kind` in this collection (once per snapshot)."""
        if query_kind not in snap.references:
            if query_kind == modality:
                snap.references[query_kind] = neighbour_similarities(snap.vectors)
            else:  # the library's own notes (or photo + note) against this collection, each case's own pair left out
                other = self._snapshot(version, "text" if modality == "image" else "image")
                rows = {case_id: i for i, case_id in enumerate(other.ids)}
                pairs = [(i, rows[case_id]) for i, case_id in enumerate(snap.ids) if case_id in rows]
                mine, theirs = (np.array(p, dtype=np.intp) for p in zip(*pairs, strict=True)) if pairs else ([], [])
                queries = other.vectors[theirs]
                if query_kind == "both":
                    queries = normalise(queries + snap.vectors[mine])
                snap.references[query_kind] = neighbour_similarities(snap.vectors, queries=queries, own=mine)
        return snap.references[query_kind]

    def _snapshot(self, version: str, modality: str) -> _Snapshot:
        name = collection_name(version, modality)
        with self._mutex:
            snap = self._snapshots.get(name)
            now = time.monotonic()
            if snap is not None and now - snap.checked_at < SNAPSHOT_TTL_S:
                return snap
            col = self._collection(version, modality, fresh=True)
            if snap is not None and snap.collection_id == str(col.id) and len(snap.ids) == col.count():
                snap.checked_at = now
                return snap
            self._snapshots[name] = snap = _Snapshot.load(col)
            return snap


def _http_client(url: str) -> Any:
    parts = urlsplit(url if "//" in url else f"//{url}")
    try:
        return chromadb.HttpClient(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 8000,
            ssl=parts.scheme == "https",
            settings=_chroma_settings(),
        )
    except ValueError as e:  # what chromadb raises when nothing answers
        raise ConnectionError(f"no Chroma server answers at {url} ({e})") from None


def _own(path: Path) -> filelock.BaseFileLock:
    """Hold the directory's lock, or raise IndexLockedError when another process or CaseIndex holds it."""
    path.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path / "owner.lock", timeout=LOCK_TIMEOUT_S, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise IndexLockedError(
            f"the case index at {path} is already open in another process or object; one process owns a local "
            "index: hand vectors to the case store, or run a Chroma server and set MMDERM_CHROMA_URL"
        ) from None
    return lock


def _hit(case_id: str, score: float, metadata: Mapping[str, Any] | None, percentile: float | None = None) -> Hit:
    meta = dict(metadata or {})
    rank = None if percentile is None or percentile != percentile else round(percentile, 1)
    return Hit(case_id, score, 1.0 - score, {f: meta.get(f) for f in METADATA_FIELDS}, rank)


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


# ---- the process's own index: what the Predictor and the pages use ----

_SHARED: dict[tuple[str, IndexConfig], CaseIndex] = {}
_SHARED_LOCK = threading.Lock()


def get_index(cfg: Config) -> CaseIndex:
    """This process's CaseIndex for cfg, opened once and kept: a process owns its local index while it runs."""
    key = (cfg.index.chroma_url or str(cfg.index_dir), cfg.index)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = CaseIndex.from_config(cfg)
        return _SHARED[key]


def close_indexes() -> None:
    """Close every index get_index opened, releasing their locks (tests, shutdown)."""
    with _SHARED_LOCK:
        for index in _SHARED.values():
            index.close()
        _SHARED.clear()


def query(
    cfg: Config,
    version: str,
    modality: str,
    vector: np.ndarray,
    k: int = 10,
    where: Mapping[str, Any] | None = None,
    query_kind: str | None = None,
) -> list[Hit]:
    """The k cases nearest `vector` in a version's `modality` collection, on this process's index."""
    return get_index(cfg).search(version, vector, modality=modality, k=k, where=where, query_kind=query_kind)
