"""Clinician feedback on the pages (AppTest): a signed-in clinician confirms a diagnosis with consent from Diagnose;
the admin sees it in the review queue and accepts it; a guest is asked to sign in."""

from __future__ import annotations

from app_helpers import NOTE, ROOT, lesion_png
from streamlit.testing.v1 import AppTest

from mmcore.audit import AuditLog
from mmcore.config import load_config
from mmcore.feedback import FeedbackQueue


def _signed_in(page: str, user: dict) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["auth_user"] = user
    at.run()
    return at.switch_page(page).run()


def _analysed(at: AppTest) -> AppTest:
    at.file_uploader(key="diagnose_upload").upload("lesion.png", lesion_png(size=32), "image/png")
    at.text_area(key="diagnose_note").input(NOTE)
    at.run()
    return at.button(key="diagnose_run").click().run()


def test_a_clinician_confirms_with_consent_and_the_admin_accepts(app_env_copy):
    at = _analysed(_signed_in("pages/1_Diagnose.py", {"name": "dr_lee", "role": "clinician"}))
    assert not at.exception
    at.selectbox(key="diagnose_feedback_dx").set_value("bcc")
    at.selectbox(key="diagnose_feedback_how").set_value("histopathology")
    at.button(key="FormSubmitter:diagnose_feedback_form-Submit for review").click().run()
    assert any("consent" in e.value for e in at.error)  # nothing is kept without it
    at.selectbox(key="diagnose_feedback_dx").set_value("bcc")
    at.checkbox(key="diagnose_feedback_consent").check()
    at.button(key="FormSubmitter:diagnose_feedback_form-Submit for review").click().run()
    assert any("waiting for an admin's review" in s.value for s in at.success), [e.value for e in at.error]

    with FeedbackQueue(load_config("tiny")) as queue:
        (pending,) = queue.list("pending")
    admin = _signed_in("pages/9_Admin.py", {"name": "admin", "role": "admin"})
    assert not admin.exception, admin.exception
    accept = admin.button(key=f"admin_feedback_accept_{pending.id}")
    accept.click().run()
    assert not admin.exception and any("the next training run learns from it" in s.value for s in admin.success)
    with FeedbackQueue(load_config("tiny")) as queue:
        (done,) = queue.list("accepted")
    assert done.user == "dr_lee" and done.dx == "bcc" and done.reviewer == "admin"
    users = [(e["event"], e["user"]) for e in AuditLog(app_env_copy / "audit.jsonl").read() if "feedback" in e["event"]]
    assert users == [("feedback_submit", "dr_lee"), ("feedback_accept", "admin")]


def test_a_guest_is_asked_to_sign_in_before_contributing(app_env):
    from app_helpers import open_page

    at = open_page("pages/1_Diagnose.py")
    at = _analysed(at)
    assert any("Sign in to contribute a case" in c.value for c in at.caption)
