"""Exact search over unit vectors: one query and a batch agree with a brute-force sort, filters keep only their rows,
a snapshot reads a collection page by page into filter columns and hit metadata, and a case is never its own
neighbour in the library's reference similarities."""

from __future__ import annotations

import numpy as np
import pytest

import mmcore.vector_search as vector_search
from mmcore.case_filters import METADATA_FIELDS
from mmcore.vector_search import Snapshot, exact_search, neighbour_similarities, normalise


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_one_query_and_a_batch_give_the_brute_force_order():
    rng = np.random.default_rng(3)
    vectors, queries = _unit(rng, 500), _unit(rng, 5)
    batch_idx, batch_sims = exact_search(queries, vectors, 7)
    for q, idx, sims in zip(queries, batch_idx, batch_sims, strict=True):
        one_idx, one_sims = exact_search(q, vectors, 7)
        expected = np.argsort(-(vectors @ q), kind="stable")[:7]
        assert one_idx.tolist() == idx.tolist() == expected.tolist()
        np.testing.assert_allclose(one_sims, (vectors @ q)[expected], atol=1e-6)
        np.testing.assert_allclose(one_sims, sims, atol=1e-6)


def test_k_beyond_the_rows_and_filters_that_keep_few_rows():
    rng = np.random.default_rng(4)
    vectors, q = _unit(rng, 6), _unit(rng, 1)[0]
    idx, sims = exact_search(q, vectors, 50)  # k > N: every row, best first
    assert sorted(idx.tolist()) == list(range(6)) and np.all(np.diff(sims) <= 0)
    keep = np.array([False, True, False, False, True, False])
    assert sorted(exact_search(q, vectors, 10, keep)[0].tolist()) == [1, 4]
    assert exact_search(q, vectors, 10, np.zeros(6, bool))[0].shape == (0,)
    assert exact_search(q, np.zeros((0, 16), np.float32), 3)[0].shape == (0,)


def test_normalise_one_vector_and_rows_and_refuses_zero_or_non_finite():
    v = normalise(np.array([3.0, 4.0]))
    assert v.dtype == np.float32 and v.tolist() == pytest.approx([0.6, 0.8])
    rows = normalise(np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)
    for bad in ([0.0, 0.0], [np.nan, 1.0], [np.inf, 1.0]):
        with pytest.raises(ValueError, match="zero or non-finite"):
            normalise(np.array(bad))


class _Collection:
    """What Snapshot.load reads of a Chroma collection: `id` and paged `get`."""

    id = "col-1"

    def __init__(self, vectors: np.ndarray, metadatas: list[dict]) -> None:
        self.vectors, self.metadatas, self.pages = vectors, metadatas, 0

    def get(self, include: list[str], limit: int, offset: int) -> dict:
        self.pages += 1
        rows = range(offset, min(offset + limit, len(self.vectors)))
        return {
            "ids": [f"c{i}" for i in rows],
            "embeddings": [self.vectors[i].tolist() for i in rows],
            "metadatas": [self.metadatas[i] for i in rows],
        }


def test_a_snapshot_reads_every_page_into_filter_columns_and_hit_metadata(monkeypatch):
    monkeypatch.setattr(vector_search, "PAGE", 2)
    vectors = _unit(np.random.default_rng(5), 5)
    metadatas = [{"dx": "mel", "age": 40.0}, {"dx": "nv"}, None, {"dx": "mel", "sex": "female"}, {"age": 70.0}]
    collection = _Collection(vectors, metadatas)
    snap = Snapshot.load(collection)
    assert collection.pages == 4  # three pages of at most 2 rows, and the empty one that ends the read
    assert snap.ids == ["c0", "c1", "c2", "c3", "c4"] and snap.collection_id == "col-1"
    np.testing.assert_allclose(snap.vectors, vectors, atol=1e-7)
    assert snap.vocab["dx"] == {"mel": 0, "nv": 1}
    assert snap.columns["dx"].tolist() == [0, 1, -1, 0, -1]  # -1: unknown
    assert np.isnan(snap.columns["age"][1]) and snap.columns["age"][4] == 70.0
    assert all(set(f) == set(METADATA_FIELDS) for f in snap.fields)  # every field, None where unknown
    assert snap.fields[3]["sex"] == "female" and snap.fields[2]["dx"] is None


def test_percentiles_place_similarities_among_the_reference():
    snap = Snapshot("c", [], np.zeros((0, 2), np.float32), [], {}, {}, 0.0)
    reference = np.array([0.1, 0.2, 0.3, 0.4])
    assert snap.percentiles(np.array([0.05, 0.2, 0.9]), reference).tolist() == [0.0, 50.0, 100.0]
    assert np.isnan(snap.percentiles(np.array([0.5]), np.zeros(0))).all()


def test_a_case_is_never_its_own_neighbour():
    vectors = _unit(np.random.default_rng(6), 40)
    reference = neighbour_similarities(vectors, k=3)
    assert len(reference) == 40 * 3 and np.all(np.diff(reference) >= 0)
    assert reference.max() < 1.0 - 1e-6  # each case's cosine 1 with itself is left out
    twins = np.repeat(vectors[:1], 2, axis=0)  # two identical cases: each is the other's neighbour at cosine 1
    assert neighbour_similarities(twins, k=1).tolist() == pytest.approx([1.0, 1.0])
    assert len(neighbour_similarities(vectors[:1])) == 0  # one case has no neighbour
