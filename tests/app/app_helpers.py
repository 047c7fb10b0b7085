"""Inputs the page tests upload and type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_tiny_home(home: Path, n: int = 84) -> Path:
    """The demo pipeline on tiny towers: SynthDerm, training, evaluation, promotion, index (seconds)."""
    env = {**os.environ, "MMDERM_HOME": str(home), "MMDERM_CONFIG": "tiny"}
    out = subprocess.run(
        [sys.executable, "-m", "mmcore", "demo", "--n", str(n)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return home


def lesion_png(index: int = 3, seed: int = 11, size: int = 64) -> bytes:
    """A SynthDerm lesion photo as PNG bytes, as a clinician would upload it."""
    import io

    from mmcore.synthderm import generate_one

    buf = io.BytesIO()
    generate_one(index, seed=seed, size=size).image.save(buf, format="PNG")
    return buf.getvalue()


NOTE = "63-year-old man, lesion on the upper back for about a year, recently darker and larger, no bleeding."


def open_page(page: str, timeout: float = 120):
    """An AppTest of the app opened at `page` (e.g. "pages/1_Diagnose.py"), as a user following a link.

    Pages link to app.py with st.page_link, which resolves only when app.py is the entrypoint.
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout).run()
    return at.switch_page(page).run()
