"""Case schema, vocabularies, the store's upsert/transaction rules and lesion/patient splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmcore.cases import (
    SITES,
    Case,
    CaseError,
    CaseStore,
    normalise_age,
    normalise_fitzpatrick,
    normalise_sex,
    normalise_site,
    validate_case,
)
from mmcore.images import load_image
from mmcore.splits import assign_splits


def _image_bytes(seed: int) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _case(store: CaseStore, i: int, **kw) -> Case:
    sha, rel = store.put_image(load_image(_image_bytes(i)))
    fields = {"case_id": f"t:{i}", "source": "t", "dx": "nv", "lesion_id": f"L{i}"} | kw
    return Case(image_sha256=sha, image_path=rel, **fields)


def test_isic_vocabularies():
    assert {"head/neck", "anterior torso", "palms/soles", "unknown"} <= set(SITES)
    assert normalise_site("scalp") == ("head/neck", "scalp")
    assert normalise_site("lower extremity") == ("lower extremity", "lower extremity")
    assert normalise_site("acral")[0] == "palms/soles"
    assert normalise_site("") == ("unknown", "")
    assert normalise_site("elbow crease") == ("unknown", "elbow crease")
    assert normalise_fitzpatrick("IV") == 4 and normalise_fitzpatrick("3") == 3 and normalise_fitzpatrick("-1") is None
    assert normalise_fitzpatrick("FST2") == 2 and normalise_fitzpatrick("") is None
    assert normalise_sex("M") == "male" and normalise_sex("unknown") is None
    assert normalise_age("45") == 45.0 and normalise_age("") is None


@pytest.mark.parametrize(
    ("fn", "value", "message"),
    [
        (normalise_age, "-3", "impossible"),
        (normalise_age, "212", "impossible"),
        (normalise_age, "old", "not a number"),
        (normalise_sex, "x", "not male, female"),
        (normalise_fitzpatrick, "7", "not 1-6"),
        (normalise_fitzpatrick, "VII", "not 1-6"),
    ],
)
def test_normalisers_name_the_problem(fn, value, message):
    with pytest.raises(CaseError, match=message):
        fn(value)


def test_validate_case_and_malignancy_default():
    case = Case(case_id="a", source="s", dx="mel")
    assert case.malignancy == "malignant"
    assert Case(case_id="b", source="s", dx="akiec").malignancy == "indeterminate"
    validate_case(case)
    with pytest.raises(CaseError, match="diagnosis is not one of akiec"):
        validate_case(Case(case_id="c", source="s", dx="melanoma", malignancy="malignant"))


def test_upsert_is_idempotent_and_duplicates_are_detected(tmp_path):
    store = CaseStore(tmp_path)
    cases = [_case(store, i) for i in range(3)]
    assert store.upsert(cases).inserted == 3
    again = store.upsert(cases)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
    # the same pixels under another id are a duplicate, not a new case
    dup = _case(store, 0, case_id="t:other")
    result = store.upsert([dup])
    assert result.inserted == 0 and result.duplicates == [("t:other", "t:0")]
    # changed metadata updates in place
    changed = _case(store, 1, age=50.0)
    assert store.upsert([changed]).updated == 1 and store.get("t:1").age == 50.0
    assert store.count() == 3


def test_failed_transaction_loses_nothing(tmp_path):
    store = CaseStore(tmp_path)
    store.upsert([_case(store, i) for i in range(2)])
    before = [(c.case_id, c.dx, c.split) for c in store.cases()]
    with pytest.raises(RuntimeError), store.transaction():
        store.upsert([_case(store, 10), _case(store, 11)])
        raise RuntimeError("disk full halfway")
    assert [(c.case_id, c.dx, c.split) for c in store.cases()] == before
    with pytest.raises(CaseError), store.transaction():
        store.upsert([_case(store, 12), _case(store, 13, dx="banana")])
    assert store.count() == 2


def test_store_survives_reopen_and_keeps_notes_and_embeddings(tmp_path):
    store = CaseStore(tmp_path)
    store.upsert([_case(store, i, notes={"M": f"note {i}"}) for i in range(4)])
    store.put_embeddings("v1", "image", ["t:0", "t:1"], np.eye(2, 8, dtype=np.float32))
    store.close()
    store = CaseStore(tmp_path)
    assert store.count() == 4 and store.notes("M")["t:2"] == "note 2"
    ids, vecs = store.get_embeddings("v1", "image")
    assert ids == ["t:0", "t:1"] and np.array_equal(vecs, np.eye(2, 8, dtype=np.float32))
    assert store.get("t:3", with_notes=True).notes == {"M": "note 3"}
    assert store.load_image(store.get("t:0")).size == (16, 16)


def test_splits_keep_lesions_and_patients_together():
    # 300 lesions, 2-3 images each; some lesions share a patient; one image links two lesions via its patient.
    cases = []
    for lesion in range(300):
        for k in range(2 + lesion % 2):
            patient = f"P{lesion // 3}" if lesion % 5 == 0 else ""
            cases.append(
                Case(case_id=f"c{lesion}-{k}", source="s", dx="nv", lesion_id=f"L{lesion}", patient_id=patient)
            )
    splits = assign_splits(cases)
    by_lesion: dict[str, set[str]] = {}
    by_patient: dict[str, set[str]] = {}
    for c in cases:
        by_lesion.setdefault(c.lesion_id, set()).add(splits[c.case_id])
        if c.patient_id:
            by_patient.setdefault(c.patient_id, set()).add(splits[c.case_id])
    assert all(len(s) == 1 for s in by_lesion.values())
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    assert assign_splits(cases) == splits  # deterministic


def test_resplit_keeps_official_splits(tmp_path):
    store = CaseStore(tmp_path)
    store.upsert([_case(store, 0, split="test"), *[_case(store, i) for i in range(1, 30)]])
    store.resplit("t")
    assert store.get("t:0").split == "test"
    assert all(c.split in ("train", "val", "test") for c in store.cases())
    # a re-import without a split keeps the assigned one
    before = store.get("t:5").split
    assert store.upsert([_case(store, 5)]).unchanged == 1 and store.get("t:5").split == before


def test_stored_splits_never_move_and_new_images_join_their_lesion(tmp_path):
    store = CaseStore(tmp_path)
    store.upsert([_case(store, i, lesion_id=f"L{i}") for i in range(40)])
    store.resplit("t")
    before = {c.case_id: c.split for c in store.cases()}
    # new images of stored lesions, and one that links two stored lesions through a patient
    extra = [_case(store, 100 + i, lesion_id=f"L{i}") for i in range(10)]
    extra.append(_case(store, 200, lesion_id="L20", patient_id="P1"))
    extra.append(_case(store, 201, lesion_id="L21", patient_id="P1"))
    store.upsert(extra)
    store.resplit("t")
    after = {c.case_id: c.split for c in store.cases()}
    assert all(after[cid] == split for cid, split in before.items())
    for i in range(10):
        assert after[f"t:{100 + i}"] == after[f"t:{i}"]


def test_a_transaction_in_one_thread_is_invisible_to_another_until_it_commits(tmp_path):
    """Before: one SQLite connection shared by every thread, so another thread saw rows not yet committed (issue 13,
    item 13)."""
    import threading

    store = CaseStore(tmp_path)
    inside, release, seen = threading.Event(), threading.Event(), []

    def writer() -> None:
        with store.transaction():
            store.upsert([_case(store, 1)])
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    seen.append(store.count())  # this thread, mid-way through the other's transaction
    release.set()
    thread.join()
    seen.append(store.count())
    assert seen == [0, 1]
    store.close()


def test_connections_of_threads_that_ended_are_closed(tmp_path):
    import threading

    store = CaseStore(tmp_path)
    for _ in range(5):
        t = threading.Thread(target=store.count)
        t.start()
        t.join()
    store.count()
    assert len(store._open) <= 2  # this thread's and at most the last one's
    store.close()


def test_case_ids_keep_to_a_safe_alphabet():
    ok = Case(case_id="ham10000:ISIC_0024306", source="s", dx="nv")
    validate_case(ok)
    validate_case(Case(case_id="folder:a/b c-1+2.jpg", source="s", dx="nv"))
    for bad in ("x:![p](http://h/t.png)", "x:<img>", "x:a\nb", "x:**b**", "x:[a](b)"):
        with pytest.raises(CaseError, match="case_id may hold only"):
            validate_case(Case(case_id=bad, source="s", dx="nv"))


def test_errors_name_the_field_never_the_value():
    for fn, value in ((normalise_age, "Jane Doe"), (normalise_sex, "Jane Doe"), (normalise_fitzpatrick, "Jane Doe")):
        with pytest.raises(CaseError) as e:
            fn(value)
        assert "Jane" not in str(e.value)


def test_image_files_are_found_by_path_or_content_and_replaced_in_place(tmp_path):
    """The table a re-import reads instead of decoding (issue 14): looked up 500 at a time, by either hash."""

    def row(i: int, **kw) -> dict:
        values = dict(path_sha256=f"p{i:04d}", size=100 + i, mtime_ns=i, ctime_ns=i, inode=i, file_sha256=f"f{i:04d}")
        return values | dict(image_sha256=f"i{i:04d}", image_path=f"images/{i}.jpg", pixels=600 * 450) | kw

    with CaseStore(tmp_path) as store:
        store.remember_image_files([row(i) for i in range(1200)])
        found = store.image_files("path_sha256", [f"p{i:04d}" for i in range(0, 1300, 7)])
        assert sorted(found) == [f"p{i:04d}" for i in range(0, 1200, 7)] and found["p0007"] == row(7)
        store.remember_image_files([row(7, mtime_ns=99)])  # the file was touched: the same path, a new stat
        assert store.image_files("path_sha256", ["p0007"])["p0007"]["mtime_ns"] == 99
        assert store.image_files("file_sha256", ["f0011", "nope"]) == {"f0011": row(11)}
        with pytest.raises(KeyError):
            store.image_files("image_path; DROP TABLE cases", ["x"])
