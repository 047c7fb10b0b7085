"""The hardened Streamlit config: upload cap, no error details in the browser, no usage statistics, XSRF on."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mmcore.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_streamlit_config_is_hardened():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["client"]["showErrorDetails"] == "none"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showSidebarNavigation"] is False
    # the upload cap agrees with the intake's byte cap
    assert cfg["server"]["maxUploadSize"] * 1_000_000 == load_config("default", env={}).intake.max_bytes
    assert (
        not (ROOT / ".streamlit" / "secrets.toml").exists()
        or ".streamlit/secrets.toml" in (ROOT / ".gitignore").read_text()
    )
