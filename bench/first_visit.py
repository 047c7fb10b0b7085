"""A browser's first visit against an already warm server: is a slow first analysis the server's or the browser's?

    python bench/first_visit.py --home /tmp/prof/home/home

Starts `streamlit run` on the home (demo preset), then three times: a new browser context loads Diagnose, waits, and
analyses a photo without reloading (its first analysis in that browser), then analyses another after a reload in the
same context. Prints the click-to-scores / overlay / similar-cases times of each (the steps of page_latency.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "browser"), str(REPO / "bench")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=REPO / "var")
    args = parser.parse_args()
    import page_latency
    from browser_helpers import start_streamlit
    from conftest import CHROMIUM_FLAGS
    from playwright.sync_api import sync_playwright

    home = args.home.resolve()
    photos = page_latency.in_distribution_photos(home, 6)
    proc, url = start_streamlit(home, {"MMDERM_CONFIG": "demo"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS)
            for i in range(3):
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(120_000)
                page.goto(f"{url}/Diagnose")
                page.get_by_text("Clinical note").first.wait_for()
                time.sleep(10 if i == 0 else 3)  # the first context also lets the server's warm-up finish
                first = page_latency.diagnose(page, url, photos[2 * i], methods=False, reload=False)
                again = page_latency.diagnose(page, url, photos[2 * i + 1], methods=False)
                print(f"context {i}: first analysis {first}; after a reload {again}", flush=True)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    main()
