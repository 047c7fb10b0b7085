"""Clinician feedback: consent and sign-in required; the queue, then an admin's review: an accepted case joins the
library (training split, flagged as clinician-contributed) and the active index; a rejected one never does."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from mmcore.audit import AuditLog
from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import load_config
from mmcore.datasets import load_case_set
from mmcore.feedback import FeedbackError, FeedbackQueue, least_sure
from mmcore.index import close_indexes, get_index
from mmcore.model_store import active_version, load_version
from mmcore.predictor import Predictor
from mmcore.synthderm import generate_one


def _photo(index: int) -> bytes:
    buf = io.BytesIO()
    image = generate_one(index, seed=777, size=32).image
    image.save(buf, format="JPEG", exif=Image.Exif())  # a camera photo would carry EXIF: it must not survive
    return buf.getvalue()


@pytest.fixture
def served(tiny_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home, ignore=shutil.ignore_patterns("*.lock", "jobs"))
    monkeypatch.setenv("MMDERM_HOME", str(home))
    cfg = load_config("tiny")
    yield cfg, Predictor.from_config(cfg)
    close_indexes()


def test_a_contribution_goes_from_the_queue_to_the_library_and_the_next_run(served):
    cfg, predictor = served
    note = "52-year-old woman, new dark spot on the shin, grew over 3 months."
    prediction = predictor.predict(_photo(1), note)
    with FeedbackQueue(cfg) as queue:
        with pytest.raises(FeedbackError, match="consent"):
            queue.submit(
                _photo(1), dx="mel", confirmation="histopathology", user="dr_a", consent=False, prediction=prediction
            )
        with pytest.raises(FeedbackError, match="sign in"):
            queue.submit(
                _photo(1), dx="mel", confirmation="histopathology", user="guest", consent=True, prediction=prediction
            )
        c = queue.submit(
            _photo(1),
            dx="mel",
            confirmation="histopathology",
            user="dr_a",
            consent=True,
            prediction=prediction,
            note=note,
            metadata={"age": 52, "sex": "female"},
        )
        assert c.status == "pending" and queue.list("pending") == [c] and c.model_dx == prediction.top[0].dx
        assert not Image.open(queue.image_path(c)).getexif()  # rebuilt from its pixels
        version = active_version(cfg)
        before = get_index(cfg).counts(version)["image"]
        accepted = queue.review(c.id, "admin", accept=True)
    assert accepted.status == "accepted" and accepted.case_id == f"clinician:{c.id:06d}"
    with CaseStore(cfg.home) as store:
        case = store.get(accepted.case_id, with_notes=True)
        assert case.split == "train" and case.source == "clinician" and case.dx == "mel"
        assert case.extra["contributed_by"] == "dr_a" and case.notes == {"clinical": note}
        assert case.age == 52 and case.dx_type == "histopathology"
        train = load_case_set(store, "train", DX_CLASSES, ("clinical",))
    assert accepted.case_id in {x.case_id for x in train.cases}  # the next fine-tuning run learns from it
    assert get_index(cfg).counts(version)["image"] == before + 1  # and the library finds it now
    events = [(e["event"], e["user"]) for e in AuditLog(cfg.audit_path).read() if e["event"].startswith("feedback")]
    assert events == [("feedback_submit", "dr_a"), ("feedback_accept", "admin")]
    with FeedbackQueue(cfg) as queue:
        assert queue.agreement()[0]["n"] == 1
        with pytest.raises(FeedbackError, match="already accepted"):
            queue.review(c.id, "admin", accept=False)


def test_a_rejected_contribution_never_reaches_training(served):
    cfg, predictor = served
    prediction = predictor.predict(_photo(2), None)
    with FeedbackQueue(cfg) as queue:
        c = queue.submit(_photo(2), dx="nv", confirmation="follow-up", user="dr_b", consent=True, prediction=prediction)
        rejected = queue.review(c.id, "admin", accept=False, reason="blurred")
        assert rejected.status == "rejected" and rejected.case_id == "" and not queue.image_path(c).exists()
    with CaseStore(cfg.home) as store:
        assert store.count(source="clinician") == 0
        assert all(x.source != "clinician" for x in load_case_set(store, "train", DX_CLASSES, ("clinical",)).cases)
    assert AuditLog(cfg.audit_path).read(event="feedback_reject")[-1]["user"] == "admin"


def test_the_least_sure_cases_come_out_of_distribution_first_then_by_margin(served):
    cfg, _ = served
    ranked = least_sure(cfg, load_version(cfg), limit=10)
    assert len(ranked) == 10
    flags = [r.in_distribution for r in ranked]
    assert flags == sorted(flags)  # False (out of distribution) before True
    inside = [r.margin for r in ranked if r.in_distribution]
    assert inside == sorted(inside) and all(0 <= m <= 1 for m in inside)
