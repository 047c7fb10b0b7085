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


def enter_case(page, photo: Path, note: str | None) -> None:
    """Upload the photo and commit the note, then wait until the server holds them: a click while the upload is still
    in flight would analyse the note alone (the page then says the inputs changed), or nothing.

    The upload is set as soon as the page shows its inputs. Waiting first for the page's first run to end, and
    targeting the uploader by its key, went with uploads dropped on a cold server (the uploader stayed empty through
    three attempts) in 4 of 10 browser-test runs; these steps passed every run before that change (not explained)."""
    page.get_by_text("Clinical note").first.wait_for()
    page.locator("input[type=file]").first.set_input_files(str(photo))
    if note:
        page.get_by_label("Clinical note").fill(note)
        page.get_by_label("Clinical note").press("Control+Enter")
    page.get_by_text(f"Ready to analyse the photo{' and the note' if note else ':'}").first.wait_for()
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden")
