"""Sign-in: password hashing, local sign-in audited with back-off and lockout, sign-out that forgets the session, an
idle timeout, OIDC roles, and every page behind sign-in when OIDC is configured (issue 13, items 8-10)."""

from __future__ import annotations

import time

import pytest
from app_helpers import ROOT, open_page
from streamlit.testing.v1 import AppTest

from mmcore.audit import AuditLog
from pages._lib import auth
from pages._lib.auth import SignInThrottle, hash_password, oidc_user, verify_password

PASSWORD = "correct horse battery"


def test_password_hash_round_trip():
    encoded = hash_password("correct horse")
    assert encoded.startswith("pbkdf2_sha256$") and "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong", encoded)
    assert not verify_password("correct horse", "garbage")
    assert hash_password("x") != hash_password("x")  # salted


def test_pbkdf2_uses_owasps_600000_iterations_and_still_reads_older_hashes():
    assert hash_password("x").split("$")[1] == "600000"
    import base64
    import hashlib

    salt = b"0123456789abcdef"
    old = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 310_000)
    b64 = base64.urlsafe_b64encode
    assert verify_password("pw", f"pbkdf2_sha256$310000${b64(salt).decode()}${b64(old).decode()}")
    assert not verify_password("pw", f"pbkdf2_sha256$999999999${b64(salt).decode()}${b64(old).decode()}")


def test_failed_sign_ins_back_off_then_lock_the_account(tmp_path):
    throttle = SignInThrottle(tmp_path / "throttle.json")
    t = 1000.0
    assert [throttle.failed("local", now=t) for _ in range(2)] == [1, 2]
    assert throttle.wait_s("local", now=t) == 0  # two free tries
    throttle.failed("local", now=t)
    assert throttle.wait_s("local", now=t) == 1.0 and throttle.wait_s("local", now=t + 1) == 0
    throttle.failed("local", now=t + 1)
    assert throttle.wait_s("local", now=t + 1) == 2.0
    throttle.failed("local", now=t + 3)
    assert throttle.wait_s("local", now=t + 3) == auth.LOCK_S  # locked after 5
    assert throttle.wait_s("local", now=t + 3 + auth.LOCK_S) == 0
    assert throttle.failed("local", now=t + 3 + auth.LOCK_S) == 1  # a lock that ran out starts over
    throttle.succeeded("local")
    assert throttle.wait_s("local", now=t) == 0


def _home(monkeypatch) -> AppTest:
    monkeypatch.setenv("MMDERM_ADMIN_PASSWORD_HASH", hash_password(PASSWORD))
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()


def _sign_in(at: AppTest, password: str, name: str = "admin") -> AppTest:
    at.text_input(key="auth_name").input(name)
    at.text_input(key="auth_password").input(password)
    return at.button(key="FormSubmitter:auth_form-Sign in").click().run()


def test_sign_ins_and_sign_outs_are_audited_and_signing_out_forgets_the_session(empty_env, monkeypatch):
    """Before: no entry for sign-ins, failed ones or sign-outs; signing out kept the rest of the admin's session."""
    at = _home(monkeypatch)
    _sign_in(at, "wrong", name="Jane Doe's password")
    assert any("Wrong user or password" in e.value for e in at.error)
    _sign_in(at, PASSWORD)
    assert not at.exception and at.session_state["auth_user"] == {"name": "admin", "role": "admin"}
    at.session_state["admin_watch_job"] = 7  # what the admin page keeps (the job watcher's job)
    at.run()
    at.button(key="auth_logout").click().run()
    assert not at.exception
    assert "auth_user" not in at.session_state and "admin_watch_job" not in at.session_state
    events = [(e["event"], e["user"]) for e in AuditLog(empty_env / "audit.jsonl").read()]
    assert events == [("sign_in_failed", "(unknown user)"), ("sign_in", "admin"), ("sign_out", "admin")]
    assert "Jane" not in (empty_env / "audit.jsonl").read_text()  # a mistyped user name may be a password


def test_a_locked_account_computes_no_hash(empty_env, monkeypatch):
    """Before: 11 guesses in 2 s, each 0.21 s of CPU; now a locked account answers without checking the password."""
    at = _home(monkeypatch)
    for _ in range(auth.LOCK_AFTER):
        SignInThrottle(empty_env / "auth_throttle.json").failed("local")
    checked = []
    monkeypatch.setattr(auth, "verify_password", lambda *a: checked.append(a) or True)
    _sign_in(at, PASSWORD)
    assert any("Too many failed sign-ins" in e.value for e in at.error)
    assert "auth_user" not in at.session_state and checked == []
    assert AuditLog(empty_env / "audit.jsonl").read()[-1]["event"] == "sign_in_refused"


def test_an_idle_session_is_signed_out(empty_env, monkeypatch):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["auth_user"] = {"name": "admin", "role": "admin"}
    at.session_state["auth_seen"] = time.time() - auth.IDLE_TIMEOUT_S - 5
    at.run()
    assert not at.exception and "auth_user" not in at.session_state
    last = AuditLog(empty_env / "audit.jsonl").read()[-1]
    assert (last["event"], last["user"], last["reason"]) == ("sign_out", "admin", "idle")


@pytest.mark.parametrize(
    ("claims", "admins", "role"),
    [
        ({"email": "Ann@Clinic.org", "email_verified": True}, ["ann@clinic.org", "bo@clinic.org"], "admin"),  # a list
        ({"email": "ann@clinic.org", "email_verified": True}, "bo@clinic.org, ann@clinic.org", "admin"),
        ({"email": "ann@clinic.org", "email_verified": False}, ["ann@clinic.org"], "clinician"),
        ({"email": "ann@clinic.org"}, ["ann@clinic.org"], "clinician"),  # not said to be verified
        ({"sub": "1184-22", "email": "x@y.org"}, ["sub:1184-22"], "admin"),  # a stable subject id
        ({"sub": "1184-22"}, "1184-22", "admin"),
        ({"sub": "1184-2"}, ["sub:1184-22"], "clinician"),
    ],
)
def test_oidc_admins_are_a_list_of_verified_emails_or_subject_ids(claims, admins, role):
    """Before: admins written as a TOML list became a string, so no one was admin; an unverified e-mail counted."""
    assert oidc_user(claims, admins).role == role


@pytest.mark.parametrize("page", ["pages/1_Diagnose.py", "pages/2_Similar_cases.py", "pages/3_Model_report.py"])
def test_with_oidc_configured_every_page_needs_a_signed_in_user(app_env, monkeypatch, page):
    """Before: with OIDC configured, a guest still saw Diagnose and past cases' photos with age, sex and site."""
    monkeypatch.delenv("MMDERM_REQUIRE_SIGN_IN", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32}
    at.run()
    at = at.switch_page(page).run()
    assert not at.exception
    assert any("Sign in" in i.value for i in at.info)
    assert not at.get("file_uploader") and not at.get("plotly_chart") and not at.get("selectbox")


def test_the_sign_in_requirement_can_be_turned_off(app_env, monkeypatch):
    monkeypatch.setenv("MMDERM_REQUIRE_SIGN_IN", "false")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32}
    at.run()
    at = at.switch_page("pages/1_Diagnose.py").run()
    assert not at.exception and at.get("file_uploader")


def test_without_oidc_the_clinical_pages_stay_open(app_env):
    at = open_page("pages/1_Diagnose.py")
    assert not at.exception and at.get("file_uploader")
