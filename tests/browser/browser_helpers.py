"""Start `streamlit run` on a free port of 127.0.0.1 for the browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(home: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """The app on a free port; its output goes to a log file beside the home (a pipe nobody reads would fill up and
    stall the server)."""
    port = _free_port()
    env = {**os.environ, "MMDERM_HOME": str(home), **(extra_env or {})}
    log_path = home.parent / f"streamlit-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"streamlit did not start: {log_path.read_text(errors='replace')[-2000:]}")


def print_failure_context(page, log_folder: Path, shot: Path) -> None:
    """What a failed browser test saw, printed into its report: the page's text, a screenshot, and the end of the
    server's log (a CI run leaves nothing else behind)."""
    try:
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        print("page text (end):\n" + page.inner_text("body", timeout=5_000)[-4000:])
    except Exception as exc:  # noqa: BLE001 - diagnostics must never hide the test's own failure
        print(f"page unavailable: {exc}")
    for log in sorted(log_folder.glob("streamlit-*.log")):
        print(f"{log.name} (end):\n" + log.read_text(errors="replace")[-4000:])
