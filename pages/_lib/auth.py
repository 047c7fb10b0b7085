"""Who is using the app: OIDC through st.login when configured, else a local admin account.

Everyone may use the clinical pages; the Admin page needs the admin role. `current_user` is the one function
that decides, and tests replace the identity by putting `auth_user` in the session state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass

import streamlit as st

_ITERATIONS = 310_000  # PBKDF2-SHA256, OWASP's 2023 recommendation


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
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    b64d = base64.urlsafe_b64decode
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), b64d(salt), int(iterations))
    return hmac.compare_digest(got, b64d(digest))


def _secret(key: str) -> str:
    try:
        return str(st.secrets.get(key, ""))
    except Exception:  # no secrets file at all
        return ""


def admin_password_hash() -> str:
    return os.environ.get("MMDERM_ADMIN_PASSWORD_HASH") or _secret("admin_password_hash")


def oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:
        return False


def current_user() -> User:
    """The signed-in user, or a guest with the clinician role."""
    injected = st.session_state.get("auth_user")
    if injected:
        return User(**injected)
    if oidc_configured() and getattr(st.user, "is_logged_in", False):
        admins = {a.strip().lower() for a in (os.environ.get("MMDERM_ADMINS") or _secret("admins")).split(",")}
        email = str(st.user.get("email", "")).lower()
        return User(name=email or "user", role="admin" if email and email in admins else "clinician")
    return GUEST


def login_ui() -> None:
    """Sign in or out, in the sidebar."""
    user = current_user()
    with st.sidebar:
        if user.is_admin or user is not GUEST:
            st.caption(f"Signed in as **{user.name}** ({user.role})")
            if st.button("Sign out", key="auth_logout"):
                st.session_state.pop("auth_user", None)
                if oidc_configured() and getattr(st.user, "is_logged_in", False):
                    st.logout()
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
                    if name == "admin" and verify_password(password, admin_password_hash()):
                        st.session_state["auth_user"] = {"name": "admin", "role": "admin"}
                        st.rerun()
                    else:
                        st.error("Wrong user or password.")


def require_admin() -> User:
    """Stop the page for anyone who is not an admin (a typed URL shows nothing else)."""
    user = current_user()
    if not user.is_admin:
        st.warning("This page is for administrators. Sign in as admin from the sidebar.")
        st.stop()
    return user


if __name__ == "__main__":  # python pages/_lib/auth.py 'password'  ->  the hash to put in the environment
    print(hash_password(sys.argv[1]))
