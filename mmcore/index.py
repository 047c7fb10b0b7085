"""The case index: Chroma collections of case embeddings (one per model version and modality) with metadata filters,
built from the case store's embeddings, searched exactly with NumPy (default; mmcore.vector_search) or by HNSW. One
process owns a local index (file lock); others hand vectors to the case store, or all share a Chroma server
(MMDERM_CHROMA_URL).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    CaseFilter,
    Condition,
    chroma_where,
    filter_mask,
    parse_filters,
)
from mmcore.cases import Case, CaseStore
from mmcore.config import Config, IndexConfig
from mmcore.vector_search import Snapshot, exact_search, neighbour_similarities, normalise

__all__ = [  # exact_search, normalise and neighbour_similarities stay importable from here
    "MODALITIES",
    "CaseIndex",
    "Hit",
    "IndexLockedError",
    "IndexNotBuiltError",
    "case_metadata",
    "close_indexes",
    "collection_name",
    "combine_queries",
    "exact_search",
    "get_index",
    "neighbour_similarities",
    "normalise",
    "query",
]

MODALITIES = ("image", "text")
# The query kind of a vector that is no library query (a findings direction): a percentile among the library's
# own neighbours would be on a scale it does not share, so its hits carry none.
UNRANKED = "unranked"
SEARCH_MODES = ("exact", "hnsw")
# Chosen in bench/results/retrieval.md: up to 100k cases of dim 128 on 2 cores, exact NumPy search is both
# exact and faster per query than Chroma's HNSW at any setting that reaches recall@10 >= 0.99.
RERANK_FACTOR = 4  # hnsw + exact_rerank: fetch k * RERANK_FACTOR candidates, re-score them exactly
LOCK_TIMEOUT_S = 0.5
SNAPSHOT_TTL_S = 5.0  # how often the exact path checks whether the collection changed under it (other replicas)
# Rows per upsert: progress (and an ETA) every 1,000 vectors, at the same throughput as 5,000 (15 s per 10k either way).
_WRITE_BATCH = 1000


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


@functools.lru_cache(maxsize=256)  # every query asks for it: a regex and a hash each time cost 20 us
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


# ---- the index ----


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
        self._snapshots: dict[str, Snapshot] = {}
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
        """Add or replace cases with their vectors (N, D); the collection is created when missing. Returns how many
        rows were written: a row the collection already holds with the same vector and metadata is left alone.

        That check (a `get` by id, 2 s per 10k rows) is what lets a build stopped by a crash or cancel resume where
        it stopped, and a build after a few new cases write only those: re-writing a row costs Chroma far more
        than adding one (49 s for 5,000 unchanged rows, against 7 s to add them; 2 cores, load average 9).
        `progress`, when given, is called with the number of cases each batch covered (written or not).
        """
        vectors = normalise(np.atleast_2d(vectors))
        if len(cases) != len(vectors):
            raise ValueError(f"{len(cases)} cases but {len(vectors)} vectors")
        written = 0
        with self._mutex:
            col = self._create(version, modality)
            check = col.count() > 0
            batch = min(self._batch_size(), _WRITE_BATCH)
            for start in range(0, len(cases), batch):
                ids = [c.case_id for c in cases[start : start + batch]]
                metadatas = [case_metadata(c) for c in cases[start : start + batch]]
                rows = np.arange(len(ids))
                if check:
                    rows = _changed_rows(col, ids, vectors[start : start + batch], metadatas)
                if len(rows):
                    col.upsert(
                        ids=[ids[i] for i in rows],
                        embeddings=vectors[start : start + batch][rows],
                        metadatas=[metadatas[i] for i in rows],
                    )
                    written += len(rows)
                if progress:
                    progress(len(ids))
            if written:
                self._snapshots.pop(col.name, None)
        return written

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
        where: CaseFilter | Mapping[str, Any] | None = None,
        image_weight: float = 0.5,
        query_kind: str | None = None,
    ) -> list[Hit]:
        """The k cases of `modality`'s collection nearest an image vector, a text vector or both, best first.

        Both are combined as w * image + (1 - w) * text (combine_queries). Image and text share one space, so a
        text vector searched in the image collection (or the reverse) is a cross-modal query. The hits' percentiles
        compare with library queries of the same kind as this one (what was given; `query_kind` overrides it).
        """
        query = combine_queries(image, text, image_weight)
        if query_kind is None:  # what the combined vector is: what was given, less a side weighted 0
            sides = (("image", image, image_weight), ("text", text, 1.0 - image_weight))
            kinds = [m for m, v, w in sides if v is not None and (w > 0 or image is None or text is None)]
            query_kind = kinds[0] if len(kinds) == 1 else "both"
        return self.search(version, query, modality=modality, k=k, where=where, query_kind=query_kind)

    def search(
        self,
        version: str,
        vector: np.ndarray,
        *,
        modality: str = "image",
        k: int = 10,
        where: CaseFilter | Mapping[str, Any] | None = None,
        query_kind: str | None = None,
    ) -> list[Hit]:
        """The k cases of `modality`'s collection nearest one query vector (D,), best first (`where`: parse_filters).

        query_kind: what the vector is ("image", "text" or "both"; default `modality`), so that each hit's percentile
        is measured against library queries of the same kind; UNRANKED for a vector no library query is like (a
        findings direction): its hits carry no percentile.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = normalise(vector)
        conditions = parse_filters(where) if where else []
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
        reference = None if query_kind == UNRANKED else self._reference(version, modality, query_kind or modality, snap)
        ranks = np.full(len(sims), np.nan) if reference is None else snap.percentiles(sims, reference)
        # Python floats and ready metadata in one go: a Hit built field by field cost as much as the search itself.
        hits = zip(order.tolist(), sims.tolist(), np.round(ranks, 1).tolist(), strict=True)
        return [Hit(snap.ids[i], s, 1.0 - s, dict(snap.fields[i]), None if r != r else r) for i, s, r in hits]

    def _reference(self, version: str, modality: str, query_kind: str, snap: Snapshot) -> np.ndarray | None:
        """Library neighbour similarities of queries of `query_kind` in this collection (once per snapshot); None
        when the library has no such queries (no case has both a note and a photo): its hits carry no percentile."""
        if query_kind not in snap.references:
            if query_kind == modality:
                snap.references[query_kind] = neighbour_similarities(snap.vectors)
            else:  # the library's own notes (or photo + note) against this collection, each case's own pair left out
                try:
                    other = self._snapshot(version, "text" if modality == "image" else "image")
                except IndexNotBuiltError:  # a library without notes (or photos): nothing to compare with, yet
                    return None
                rows = {case_id: i for i, case_id in enumerate(other.ids)}
                pairs = [(i, rows[case_id]) for i, case_id in enumerate(snap.ids) if case_id in rows]
                if not pairs:
                    return None
                mine, theirs = (np.array(p, dtype=np.intp) for p in zip(*pairs, strict=True))
                queries = other.vectors[theirs]
                if query_kind == "both":
                    queries = normalise(queries + snap.vectors[mine])
                snap.references[query_kind] = neighbour_similarities(snap.vectors, queries=queries, own=mine)
        return snap.references[query_kind]

    def _snapshot(self, version: str, modality: str) -> Snapshot:
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
            self._snapshots[name] = snap = Snapshot.load(col)
            return snap


def _changed_rows(col: Any, ids: list[str], vectors: np.ndarray, metadatas: list[dict[str, Any]]) -> np.ndarray:
    """Positions of the rows the collection lacks or holds with another vector or other metadata."""
    got = col.get(ids=ids, include=["embeddings", "metadatas"])
    rows = zip(got["ids"], got["embeddings"], got["metadatas"], strict=True)
    held = {case_id: (np.asarray(e, dtype=np.float32), m) for case_id, e, m in rows}
    changed = []
    for row, (case_id, vector, meta) in enumerate(zip(ids, vectors, metadatas, strict=True)):
        old = held.get(case_id)
        if old is None or dict(old[1] or {}) != meta or not np.allclose(old[0], vector, rtol=0, atol=1e-6):
            changed.append(row)
    return np.asarray(changed, dtype=np.intp)


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
    where: CaseFilter | Mapping[str, Any] | None = None,
    query_kind: str | None = None,
) -> list[Hit]:
    """The k cases nearest `vector` in a version's `modality` collection, on this process's index."""
    return get_index(cfg).search(version, vector, modality=modality, k=k, where=where, query_kind=query_kind)
