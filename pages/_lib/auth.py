"""Who is using the app: OIDC through st.login when configured, else a local admin account.

The Admin page needs the admin role; the clinical pages need a signed-in user whenever sign-in is required (by default
when OIDC is configured), else anyone may use them. `current_user` is the one function that decides, and tests replace
the identity by putting `auth_user` in the session state. Sign-ins, failed ones included, and sign-outs are audited;
failed local sign-ins back off and then lock the account for a while; an idle session is signed out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

_ITERATIONS = 600_000  # PBKDF2-SHA256, OWASP's current recommendation (Password Storage Cheat Sheet)
_MAX_ITERATIONS = 10_000_000  # a stored hash asking for more is refused: checking it would only burn CPU
IDLE_TIMEOUT_S = 30 * 60  # MMDERM_IDLE_TIMEOUT_MIN overrides
FREE_FAILURES = 2  # failed local sign-ins before each next try must wait (1 s, 2 s, 4 s ...)
LOCK_AFTER = 5  # consecutive failures that lock local sign-in for LOCK_S
LOCK_S = 15 * 60


@dataclass(frozen=True)
class User:
    name: str
    role: str  # "clinician" or "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


GUEST = User(name="guest", role="clinician")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """pbkdf2_sha256$iterations$salt$hash, for MMDERM_ADMIN_PASSWORD_HASH or secrets.toml."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    b64 = base64.urlsafe_b64encode
    return f"pbkdf2_sha256${_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        rounds = int(iterations)
        b64d = base64.urlsafe_b64decode
        salt_bytes, expected = b64d(salt), b64d(digest)
    except ValueError:  # malformed hash (binascii.Error is a ValueError)
        return False
    if scheme != "pbkdf2_sha256" or not 1 <= rounds <= _MAX_ITERATIONS:
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt_bytes, rounds)
    return hmac.compare_digest(got, expected)


def _secret(key: str) -> Any:
    """A value of .streamlit/secrets.toml as TOML gave it (a list stays a list), or "" when absent."""
    try:
        return st.secrets.get(key, "")
    except Exception:  # no secrets file at all
        return ""


def admin_password_hash() -> str:
    return os.environ.get("MMDERM_ADMIN_PASSWORD_HASH") or str(_secret("admin_password_hash"))


def oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:
        return False


def sign_in_required() -> bool:
    """Whether every page needs a signed-in user: MMDERM_REQUIRE_SIGN_IN or `require_sign_in` in the secrets, by
    default on when OIDC is configured (a local admin account alone leaves the clinical pages open)."""
    value = os.environ.get("MMDERM_REQUIRE_SIGN_IN", "")
    if not value:
        value = _secret("require_sign_in")
    if value in ("", None):
        return oidc_configured()
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def admin_list(value: str | Sequence[str] | None) -> set[str]:
    """Admins as configured: a TOML list or a comma-separated string of e-mail addresses (case-insensitive) and
    stable subject ids ("sub:<id>", or any entry without an "@")."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    out = set()
    for item in (str(i).strip() for i in items):
        if item:
            out.add(item.lower() if "@" in item else "sub:" + item.removeprefix("sub:"))
    return out


def oidc_user(claims: Mapping[str, Any], admins: str | Sequence[str] | None) -> User:
    """The user an identity provider vouches for: admin when their subject id is listed, or their e-mail is listed
    and the provider says it is verified (an unverified address is anyone's to type)."""
    email = str(claims.get("email") or "").strip().lower()
    verified = claims.get("email_verified") is True or str(claims.get("email_verified")).lower() == "true"
    subject = str(claims.get("sub") or "")
    listed = admin_list(admins)
    admin = bool((email and verified and email in listed) or (subject and f"sub:{subject}" in listed))
    name = email or (f"sub:{subject}" if subject else "user")
    return User(name=name, role="admin" if admin else "clinician")


def current_user() -> User:
    """The signed-in user, or a guest with the clinician role (also once the session has been idle too long: a
    fragment that reruns on its own, like the job watcher, then no longer acts for anyone)."""
    return GUEST if _idle() else _identity()


def _identity() -> User:
    injected = st.session_state.get("auth_user")
    if injected:
        return User(**injected)
    if oidc_configured() and getattr(st.user, "is_logged_in", False):
        return oidc_user(st.user.to_dict(), os.environ.get("MMDERM_ADMINS") or _secret("admins"))
    return GUEST


def _idle() -> bool:
    seen = st.session_state.get("auth_seen")
    return seen is not None and time.time() - seen > _idle_timeout_s()


def session_user() -> User:
    """current_user() once per page run, with the session's bookkeeping: an idle session is signed out, and the
    first page an OIDC user opens records their sign-in."""
    user = _identity()
    if user == GUEST:
        return user
    if _idle():
        sign_out(user, reason="idle")
        return GUEST
    st.session_state["auth_seen"] = time.time()
    if "auth_user" not in st.session_state and not st.session_state.get("auth_recorded"):
        _audit("sign_in", user.name, method="oidc", role=user.role)  # a local sign-in is recorded where it happens
        st.session_state["auth_recorded"] = True
    return user


def _idle_timeout_s() -> float:
    try:
        return float(os.environ.get("MMDERM_IDLE_TIMEOUT_MIN", "")) * 60
    except ValueError:
        return IDLE_TIMEOUT_S


def sign_out(user: User, reason: str = "") -> None:
    """Audit, then forget everything this session held (the job watcher included); OIDC also drops its cookie."""
    _audit("sign_out", user.name, **({"reason": reason} if reason else {}))
    st.session_state.clear()
    if oidc_configured() and getattr(st.user, "is_logged_in", False):
        st.logout()


def login_ui() -> None:
    """Sign in or out, in the sidebar."""
    user = current_user()
    with st.sidebar:
        if user != GUEST:
            st.caption(f"Signed in as **{_plain(user.name)}** ({user.role})")
            if st.button("Sign out", key="auth_logout"):
                sign_out(user)
                st.rerun()
            return
        if oidc_configured():
            if st.button("Sign in", key="auth_oidc"):
                st.login()
            return
        with st.expander("Admin sign-in"):
            if not admin_password_hash():
                st.caption("Admin sign-in is off: set MMDERM_ADMIN_PASSWORD_HASH (see README).")
                return
            with st.form("auth_form", clear_on_submit=True):
                name = st.text_input("User", value="admin", key="auth_name")
                password = st.text_input("Password", type="password", key="auth_password")
                if st.form_submit_button("Sign in"):
                    _local_sign_in(name, password)


def _local_sign_in(name: str, password: str) -> None:
    """Check a local sign-in unless the account is backing off or locked (then no hash is computed at all)."""
    throttle = SignInThrottle(_throttle_path())
    wait = throttle.wait_s("local")
    shown = "admin" if name == "admin" else "(unknown user)"  # a mistyped name may be a password
    if wait > 0:
        _audit("sign_in_refused", shown, method="local", retry_after_s=math.ceil(wait))
        st.error(f"Too many failed sign-ins: try again in {_duration(wait)}.")
        return
    if name == "admin" and verify_password(password, admin_password_hash()):
        throttle.succeeded("local")
        st.session_state.clear()  # nothing of a previous identity's session carries over
        st.session_state.update(auth_user={"name": "admin", "role": "admin"}, auth_seen=time.time(), auth_recorded=True)
        _audit("sign_in", "admin", method="local", role="admin")
        st.rerun()
    failures = throttle.failed("local")
    _audit("sign_in_failed", shown, method="local", failures=failures)
    st.error("Wrong user or password.")


def _duration(seconds: float) -> str:
    return f"{math.ceil(seconds)} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"


def _plain(text: str) -> str:
    from pages._lib.widgets import plain

    return plain(text)


def _audit(event: str, user: str, **fields: Any) -> None:
    from pages._lib import loaders

    loaders.get_audit().append(event, user, **fields)


def _throttle_path() -> Path:
    from pages._lib import loaders

    return loaders.get_config().home / "auth_throttle.json"


class SignInThrottle:
    """Consecutive failed sign-ins per account, in the data home so every app process and replica shares them:
    after FREE_FAILURES each next try waits 1 s, 2 s, 4 s ...; after LOCK_AFTER the account is locked for LOCK_S."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock

        self.path = path
        self._lock = FileLock(str(path) + ".lock")

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def wait_s(self, account: str, now: float | None = None) -> float:
        """Seconds before `account` may try again (0: now)."""
        now = time.time() if now is None else now
        state = self._load().get(account) or {}
        failures, last = int(state.get("failures", 0)), float(state.get("last", 0.0))
        if failures >= LOCK_AFTER:
            delay = LOCK_S
        elif failures > FREE_FAILURES:
            delay = 2.0 ** (failures - FREE_FAILURES - 1)
        else:
            return 0.0
        return max(0.0, last + delay - now)

    def failed(self, account: str, now: float | None = None) -> int:
        """Record a failure; returns the consecutive failures so far (a lock that has run out starts over)."""
        now = time.time() if now is None else now
        with self._lock:
            data = self._load()
            state = data.get(account) or {}
            failures = int(state.get("failures", 0))
            if failures >= LOCK_AFTER and now - float(state.get("last", 0.0)) >= LOCK_S:
                failures = 0
            data[account] = {"failures": failures + 1, "last": now}
            self._save(data)
        return failures + 1

    def succeeded(self, account: str) -> None:
        with self._lock:
            data = self._load()
            if data.pop(account, None) is not None:
                self._save(data)


def require_admin() -> User:
    """Stop the page for anyone who is not an admin (a typed URL shows nothing else)."""
    user = current_user()
    if not user.is_admin:
        st.warning("This page is for administrators. Sign in as admin from the sidebar.")
        st.stop()
    return user


if __name__ == "__main__":  # python pages/_lib/auth.py 'password'  ->  the hash to put in the environment
    print(hash_password(sys.argv[1]))
