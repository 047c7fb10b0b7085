"""The browser test's first analysis on N cold servers in a row: does Analyse ever hang or get lost?

    python bench/cold_analyse_loop.py --n 16

Builds the tiny demo home once (python -m mmcore demo --n 84, tiny preset), then N times: a fresh copy of it, a new
`streamlit run`, a new browser context that uploads a SynthDerm photo, types a note, waits for the page to say
"Ready to analyse the photo and the note" and for the app to go idle, presses Analyse and waits (45 s at most) for
the scores, the Grad-CAM overlay and the word attributions. A run that stops short gets `py-spy dump` of the server
(when py-spy is installed), the page text and a screenshot beside the homes. Before the "Ready" wait existed, 3 of 12
cold servers failed this loop (a click while the upload was in flight was lost or analysed the note alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "browser"), str(REPO / "tests" / "app")]
NOTE = "58-year-old man, lesion on the upper back noticed a year ago, has grown and darkened, no bleeding."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmderm-cold-loop"))
    args = parser.parse_args()
    from app_helpers import build_tiny_home
    from browser_helpers import enter_case, start_streamlit
    from conftest import CHROMIUM_FLAGS
    from playwright.sync_api import sync_playwright

    from mmcore.synthderm import generate_one

    os.chdir(REPO)
    base = args.work / "base"
    if not base.exists():
        build_tiny_home(base)
    photo = args.work / "lesion.png"
    generate_one(5, seed=21, size=224).image.save(photo)
    failed = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_FLAGS)
        for i in range(args.n):
            home = args.work / f"run{i}" / "home"
            shutil.rmtree(home.parent, ignore_errors=True)
            home.parent.mkdir(parents=True)
            shutil.copytree(base, home)
            proc, url = start_streamlit(home, {"MMDERM_CONFIG": "tiny"})
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(45_000)
            started, stage = time.perf_counter(), "page load"
            try:
                page.goto(f"{url}/Diagnose")
                stage = "ready"
                enter_case(page, photo, NOTE)
                page.get_by_role("button", name="Analyse").click()
                checks = (("scores", "Top 3"), ("overlay", "where the model looked"), ("words", "Which words"))
                for stage, text in checks:  # noqa: B007 - `stage` names the step a stopped run stopped at
                    page.get_by_text(text).first.wait_for()
                print(f"{i}: ok in {time.perf_counter() - started:.1f} s", flush=True)
            except Exception:  # noqa: BLE001 - a stopped run is the measurement: keep what shows why
                failed += 1
                print(f"{i}: stopped at {stage} after {time.perf_counter() - started:.1f} s", flush=True)
                if shutil.which("py-spy"):
                    dump = subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], capture_output=True, text=True)
                    (home.parent / "py-spy.txt").write_text(dump.stdout + dump.stderr)
                (home.parent / "page.txt").write_text(page.inner_text("body"))
                page.screenshot(path=str(home.parent / "page.png"), full_page=True)
            context.close()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        browser.close()
    print(f"{args.n - failed} of {args.n} cold servers analysed; {failed} stopped short")


if __name__ == "__main__":
    main()
