"""The case index: filters give exactly the brute-force ids, cross-modal and combined queries, rebuild gives the same
top 10, one owner per local directory, and the same tests against a real `chroma run` server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from mmcore.case_filters import METADATA_FIELDS, CaseFilter
from mmcore.cases import DX_CLASSES, Case, CaseStore
from mmcore.commands import main
from mmcore.config import Config, IndexConfig
from mmcore.index import (
    UNRANKED,
    CaseIndex,
    IndexLockedError,
    IndexNotBuiltError,
    case_metadata,
    close_indexes,
    collection_name,
    combine_queries,
    exact_search,
    get_index,
    query,
)

N, DIM = 300, 32
SITES = ("head/neck", "anterior torso", "upper extremity", "lower extremity", "unknown")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fake_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for i in range(N):
        case_id = f"fake:{i:04d}"
        cases.append(
            Case(
                case_id=case_id,
                source=str(rng.choice(["synthderm", "ham10000"])),
                dx=str(rng.choice(DX_CLASSES)),
                image_sha256=hashlib.sha256(case_id.encode()).hexdigest(),
                image_path=f"images/{i}.png",  # never read: the index needs metadata and vectors only
                age=None if rng.random() < 0.1 else float(rng.integers(18, 90)),
                sex=None if rng.random() < 0.1 else str(rng.choice(["male", "female"])),
                site=str(rng.choice(SITES)),
                fitzpatrick=None if rng.random() < 0.2 else int(rng.integers(1, 7)),
                domain=str(rng.choice(["dermoscopy", "clinical", ""])),
                split=str(rng.choice(["train", "val", "test"])),
            )
        )
    return cases


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A case store with N fake cases and random unit image/text embeddings for model version "v1"."""
    rng = np.random.default_rng(7)
    home = tmp_path_factory.mktemp("home")
    cases = _fake_cases(rng)
    image, text = _unit(rng, N), _unit(rng, N)
    with CaseStore(home) as store:
        store.upsert(cases)
        ids = [c.case_id for c in cases]
        store.put_embeddings("v1", "image", ids, image)
        store.put_embeddings("v1", "text", ids, text)
    return {"home": home, "cases": cases, "image": image, "text": text, "queries": _unit(rng, 5)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `chroma run` on 127.0.0.1 and a free port, telemetry off; yields its URL, stops it afterwards."""
    import chromadb
    from chromadb.config import Settings

    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists():
        pytest.skip(f"no chroma CLI beside {sys.executable}")
    folder = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    log = (folder / "server.log").open("wb")  # a pipe nobody reads would fill up and stall the server
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    cmd = [str(exe), "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False))
                break
            except ValueError:  # not answering yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(params=["persistent", "http"])
def open_index(request: pytest.FixtureRequest, tmp_path: Path):
    """Opens CaseIndex objects on a local directory or on the shared server; closes them after the test."""
    url = request.getfixturevalue("chroma_server") if request.param == "http" else ""
    opened: list[CaseIndex] = []

    def make(search: str = "exact", **settings) -> CaseIndex:
        index = CaseIndex(tmp_path / "index", IndexConfig(chroma_url=url, **settings), search=search)
        opened.append(index)
        return index

    yield make
    for index in opened:
        if url:  # the server outlives the test: leave it clean for the next one
            index.drop("v1")
        index.close()


def _brute_force(library: dict, modality: str, q: np.ndarray, keep, k: int = 10) -> list[tuple[str, float]]:
    rows = [i for i, c in enumerate(library["cases"]) if keep(c)]
    scores = library[modality][rows] @ q
    best = np.argsort(-scores)[:k]
    return [(library["cases"][rows[i]].case_id, float(scores[i])) for i in best]


@pytest.mark.parametrize("search", ["exact", "hnsw"])
def test_filtered_query_returns_exactly_the_brute_force_ids(library, open_index, search):
    index = open_index(search)
    with CaseStore(library["home"]) as store:
        assert index.build("v1", store) == {"image": N, "text": N}
    filters = [
        ({"dx": ["mel", "bcc"], "age": {"$gte": 40, "$lte": 70}, "sex": "male"},
         lambda c: c.dx in ("mel", "bcc") and c.age is not None and 40 <= c.age <= 70 and c.sex == "male"),
        ({"fitzpatrick": [5, 6], "site": "unknown", "split": {"$in": ["train", "test"]}},
         lambda c: c.fitzpatrick in (5, 6) and c.site == "unknown" and c.split in ("train", "test")),
        ({"fitzpatrick": {"$gte": 3}, "domain": "clinical", "source": "ham10000", "sex": None},
         lambda c: c.fitzpatrick is not None and c.fitzpatrick >= 3 and c.domain == "clinical"
         and c.source == "ham10000"),
    ]  # fmt: skip
    for where, keep in filters:
        for modality in ("image", "text"):
            for q in library["queries"]:
                expected = _brute_force(library, modality, q, keep)
                hits = index.query("v1", image=q, modality=modality, where=where)
                assert [h.case_id for h in hits] == [cid for cid, _ in expected], (where, modality)
                np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
                assert all(keep(next(c for c in library["cases"] if c.case_id == h.case_id)) for h in hits)
    hit = index.query("v1", image=library["queries"][0], k=3)[0]
    assert set(hit.metadata) == set(METADATA_FIELDS) and abs(hit.distance - (1 - hit.score)) < 1e-6
    for nothing in ({"dx": "df", "age": {"$gt": 200}}, {"dx": ["scc"]}):  # no case has scc
        assert index.query("v1", image=library["queries"][0], where=nothing) == []


@pytest.mark.parametrize("search", ["exact", "hnsw"])
def test_cross_modal_and_combined_queries(library, open_index, search):
    index = open_index(search)
    with CaseStore(library["home"]) as store:
        index.build("v1", store)
    target = library["cases"][123].case_id
    as_text = library["image"][123]  # a note embedded exactly where case 123's image lies
    hits = index.query("v1", text=as_text, modality="image", k=5)
    assert hits[0].case_id == target and hits[0].score == pytest.approx(1.0, abs=1e-5)
    hits = index.query("v1", image=library["text"][45], modality="text", k=5)
    assert hits[0].case_id == library["cases"][45].case_id

    a, b = library["queries"][1], library["queries"][2]
    combined = combine_queries(a, 3 * b, image_weight=0.7)  # the text vector is normalised before weighting
    manual = 0.7 * a + 0.3 * b
    np.testing.assert_allclose(combined, manual / np.linalg.norm(manual), atol=1e-6)
    expected = _brute_force(library, "image", combined, lambda c: True)
    hits = index.query("v1", image=a, text=3 * b, image_weight=0.7)
    assert [h.case_id for h in hits] == [cid for cid, _ in expected]


@pytest.mark.parametrize("search", ["exact", "hnsw"])
def test_rebuild_returns_the_same_top_10(library, open_index, search):
    index = open_index(search)
    q = library["queries"]
    with CaseStore(library["home"]) as store:
        index.build("v1", store)
        before = [index.query("v1", image=v, modality=m) for v in q for m in ("image", "text")]
        assert index.rebuild("v1", store) == {"image": N, "text": N}
    after = [index.query("v1", image=v, modality=m) for v in q for m in ("image", "text")]
    for old, new in zip(before, after, strict=True):
        assert [h.case_id for h in old] == [h.case_id for h in new]
        np.testing.assert_allclose([h.distance for h in old], [h.distance for h in new], atol=1e-5)


def test_build_follows_the_case_store(library, open_index, tmp_path):
    index = open_index()
    home = tmp_path / "copy"
    with CaseStore(home) as store:
        store.upsert(library["cases"][:50])
        ids = [c.case_id for c in library["cases"][:50]]
        store.put_embeddings("v1", "image", ids, library["image"][:50])
        assert index.build("v1", store) == {"image": 50, "text": 0}
        with pytest.raises(IndexNotBuiltError, match="no text index for model 'v1'"):
            index.query("v1", image=library["queries"][0], modality="text")
        store.delete(ids[:10])  # embeddings go with their cases
        assert index.build("v1", store) == {"image": 40, "text": 0}
    assert index.counts("v1") == {"image": 40, "text": 0}
    found = {h.case_id for h in index.query("v1", image=library["queries"][0], k=50)}
    assert found == set(ids[10:])


def test_one_owner_per_local_directory(tmp_path, home, monkeypatch):
    index = CaseIndex(home / "index")
    with pytest.raises(IndexLockedError, match="already open .* MMDERM_CHROMA_URL"):
        CaseIndex(home / "index")
    # another process: the CLI says so in one line and exits 2
    env = {**os.environ, "MMDERM_HOME": str(home), "MMDERM_CHROMA_URL": ""}
    argv = [sys.executable, "-m", "mmcore", "index", "query", "--model", "v1", "--text", "case:x"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "already open" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    index.close()
    CaseIndex(home / "index").close()  # free again once the owner closes


def test_the_process_index_serves_the_predictor(library, tmp_path):
    """What the Predictor calls: index.query(cfg, version, modality, vector, k, where) on this process's index."""
    cfg = Config(home=tmp_path)
    with CaseStore(library["home"]) as store:
        get_index(cfg).build("v1", store)
    try:
        target = library["cases"][5]
        hits = query(cfg, "v1", "text", library["text"][5], k=3, where={"dx": {"$in": [target.dx]}})
        assert hits[0].case_id == target.case_id and hits[0].score == pytest.approx(1.0, abs=1e-5) and len(hits) == 3
        assert get_index(cfg) is get_index(cfg)
        with pytest.raises(IndexLockedError):
            CaseIndex.from_config(cfg)
    finally:
        close_indexes()
    CaseIndex.from_config(cfg).close()


def test_cli_query_by_stored_case(library, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMDERM_HOME", str(library["home"]))
    monkeypatch.delenv("MMDERM_CHROMA_URL", raising=False)
    with CaseIndex(library["home"] / "index") as index, CaseStore(library["home"]) as store:
        assert index.build("v1", store) == {"image": N, "text": N}
    target = library["cases"][7]
    where = {"dx": [target.dx], "site": target.site}
    argv = ["index", "query", "--model", "v1", "--text", f"case:{target.case_id}", "--modality", "text", "--k", "5"]
    assert main([*argv, "--where", json.dumps(where), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["case_id"] == target.case_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(h["metadata"]["dx"] == target.dx and h["metadata"]["site"] == target.site for h in hits)

    for bad, message in [
        (["index", "build", "--model", "v9"], "'v9' is not a model version name"),
        (["index", "query", "--model", "v1"], "query needs --image FILE, --text NOTE"),
        (["index", "query", "--model", "v1", "--image", "case:nope"], "'nope' is not in the image index"),
        ([*argv, "--where", '{"colour": "red"}'], "cannot filter by 'colour'"),
        ([*argv, "--where", "{bad"], "--where is not JSON"),
    ]:
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_cli_without_an_active_model(home, capsys):
    assert main(["index", "build"]) == 2
    assert "no active model" in capsys.readouterr().err


def test_exact_search_single_and_batched():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 200), _unit(rng, 4)
    idx, sims = exact_search(queries, vectors, 10)  # (Q, k)
    assert idx.shape == sims.shape == (4, 10)
    for q, row, s in zip(queries, idx, sims, strict=True):
        one_idx, one_sims = exact_search(q, vectors, 10)
        assert list(one_idx) == list(row) == list(np.argsort(-(vectors @ q))[:10])
        np.testing.assert_allclose(one_sims, s, atol=1e-6)
        assert np.all(np.diff(s) <= 0)
    assert exact_search(queries[0], vectors[:3], 10)[0].shape == (3,)
    mask = np.arange(200) % 3 == 0  # rows a filter keeps
    idx, _ = exact_search(queries[0], vectors, 10, mask)
    assert list(idx) == list(np.flatnonzero(mask)[np.argsort(-(vectors[mask] @ queries[0]))[:10]])
    assert sorted(exact_search(queries, vectors, 10, np.arange(200) < 4)[0][2]) == [0, 1, 2, 3]
    assert exact_search(queries[0], np.zeros((0, DIM), np.float32), 10)[0].shape == (0,)


def test_names_metadata_and_filters():
    assert collection_name("v0001-20261122T080000Z", "image") == "cases__v0001-20261122T080000Z__image"
    dotted, dashed = collection_name("v1.0", "text"), collection_name("v1-0", "text")
    assert dotted != dashed and ".." not in dotted and dotted.endswith("__text")
    case = Case(case_id="a", source="s", dx="mel", age=None, sex=None, fitzpatrick=None, domain="")
    assert case_metadata(case) == {"case_id": "a", "dx": "mel", "malignancy": "malignant", "site": "unknown",
                                   "source": "s"}  # fmt: skip


def test_typed_filters_give_the_same_where_as_the_dict_and_the_right_ids(library):
    typed = CaseFilter(dx=("mel", "bcc"), sex=("female",), fitzpatrick=(1, 2), age=(40, 70), source=" synthderm ")
    assert typed.to_dict() == {"dx": ["mel", "bcc"], "sex": ["female"], "fitzpatrick": [1, 2], "source": "synthderm",
                               "age": {"$gte": 40.0, "$lte": 70.0}}  # fmt: skip
    assert CaseFilter(age=(0, 100)).to_dict() == {}  # the whole slider: no constraint, unknown ages included
    expected = sorted(
        c.case_id
        for c in library["cases"]
        if c.dx in ("mel", "bcc") and c.sex == "female" and c.fitzpatrick in (1, 2) and c.age is not None
        and 40 <= c.age <= 70 and c.source == "synthderm"
    )  # fmt: skip
    with CaseIndex(library["home"] / "typed-index") as index, CaseStore(library["home"]) as store:
        index.build("v1", store)
        hits = index.search("v1", library["queries"][0], k=N, where=typed.to_dict())
    assert sorted(h.case_id for h in hits) == expected and expected


def test_http_index_shares_one_library(library, chroma_server):
    """Two replicas on one server: what one builds, the other finds; no directory lock is involved."""
    version = f"v-{uuid.uuid4().hex[:8]}"
    settings = IndexConfig(chroma_url=chroma_server)
    writer, reader = CaseIndex("unused-a", settings), CaseIndex("unused-b", settings)
    with CaseStore(library["home"]) as store:
        ids, vectors = store.get_embeddings("v1", "image")
        writer.upsert(version, "image", [store.get(i) for i in ids[:100]], vectors[:100])
    hits = reader.query(version, image=vectors[42])
    assert hits[0].case_id == ids[42] and reader.counts(version) == {"image": 100, "text": 0}
    writer.drop(version)
    with pytest.raises(IndexNotBuiltError):
        CaseIndex("unused-c", settings).query(version, image=vectors[42])


def test_hits_carry_their_percentile_among_the_librarys_own_neighbours(library):
    from mmcore.index import neighbour_similarities

    with CaseIndex(library["home"] / "pct-index") as index, CaseStore(library["home"]) as store:
        index.build("v1", store)
        own = index.search("v1", library["image"][3], k=1)[0]  # a library case finds itself at cosine 1
        far = index.search("v1", -library["image"][3], k=1)[0]  # the opposite direction: nothing is near it
    assert own.case_id == library["cases"][3].case_id and own.percentile == 100.0
    reference = neighbour_similarities(library["image"])
    assert far.percentile == pytest.approx(100 * np.searchsorted(reference, far.score, side="right") / len(reference))
    assert far.percentile < own.percentile and len(reference) == 8 * min(1000, N)
    # what the raw cosine hides: in this library, a cosine of 0.2 is about as far as neighbours ever get
    assert 100 * np.searchsorted(reference, 0.2) / len(reference) < 5


# ---- issue 14: a build writes only what the collection lacks, so a stopped build resumes where it stopped ----


def test_a_build_writes_only_rows_that_are_new_or_changed(library, tmp_path):
    import dataclasses

    cases, vectors = library["cases"], library["image"]
    with CaseIndex(tmp_path / "index") as index:
        assert index.upsert("v1", "image", cases, vectors) == N
        assert index.upsert("v1", "image", cases, vectors) == 0  # nothing changed: nothing written
        moved = vectors.copy()
        moved[7] = _unit(np.random.default_rng(1), 1)[0]
        older = dataclasses.replace(cases[3], age=33.0)
        assert index.upsert("v1", "image", [*cases[:3], older, *cases[4:]], moved) == 2
        assert index.search("v1", moved[7], k=1)[0].case_id == cases[7].case_id
        assert index.search("v1", moved[3], k=1)[0].metadata["age"] == 33.0


def test_a_build_stopped_halfway_resumes_without_writing_its_finished_batches(library, tmp_path, monkeypatch):
    import mmcore.index as index_module

    monkeypatch.setattr(index_module, "_WRITE_BATCH", 100)
    batches = []

    def stop_after_the_first_batch(n: int) -> None:
        batches.append(n)
        if len(batches) == 1:
            raise KeyboardInterrupt  # a cancel, or a crash, after the first batch was written

    with CaseStore(library["home"]) as store, CaseIndex(tmp_path / "index") as index:
        with pytest.raises(KeyboardInterrupt):
            index.build("v1", store, modalities=["image"], progress=stop_after_the_first_batch)
        assert index.counts("v1")["image"] == 100
        written = []
        real_upsert = index_module.CaseIndex.upsert
        monkeypatch.setattr(
            index_module.CaseIndex, "upsert", lambda self, *a, **k: written.append(real_upsert(self, *a, **k))
        )
        assert index.build("v1", store, modalities=["image"]) == {"image": N}
        assert written == [N - 100] and index.counts("v1")["image"] == N


def test_a_note_query_is_measured_against_the_librarys_own_notes(library):
    """A note is never as close to a photo as a photo is: its percentile compares it with library notes."""
    from mmcore.index import neighbour_similarities

    with CaseIndex(library["home"] / "pct-cross") as index, CaseStore(library["home"]) as store:
        index.build("v1", store)
        note = index.search("v1", library["text"][3], modality="image", k=1, query_kind="text")[0]
        photo = index.search("v1", library["text"][3], modality="image", k=1)[0]  # the same vector, as if a photo
    cross = neighbour_similarities(library["image"], queries=library["text"], own=np.arange(N))
    same = neighbour_similarities(library["image"])
    assert note.percentile == pytest.approx(
        100 * np.searchsorted(cross, note.score, side="right") / len(cross), abs=0.05
    )
    assert photo.percentile == pytest.approx(
        100 * np.searchsorted(same, photo.score, side="right") / len(same), abs=0.05
    )
    with CaseIndex(library["home"] / "pct-cross") as index:  # query() names the kind from what it is given
        by_note = index.query("v1", text=library["text"][3], k=1)[0]
        unranked = index.query("v1", text=library["text"][3], k=1, query_kind=UNRANKED)[0]
    assert by_note.percentile == note.percentile and unranked.percentile is None
