"""The main flow in a real browser: Debian chromium, Playwright, `streamlit run` on 127.0.0.1.

Upload a photo, type a note, get scores and an overlay, open Similar cases and the Model report; search the library
by findings; open the Admin
URL as a first request without signing in and see no admin content; sign in as admin, start a tiny training job
and see its curve; confirm a diagnosis with consent and find it in the admin's review queue; see the findings the
model sees and download the consult PDF. Screenshots go to MMDERM_SCREENSHOTS when set (`make screenshots` runs this
on a scratch copy of the demo home and writes docs/screenshots/), else to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from browser_helpers import enter_case, print_failure_context, start_streamlit

pytestmark = pytest.mark.browser
ADMIN_PASSWORD = "browser-test-admin"
NOTE = "58-year-old man, lesion on the upper back noticed a year ago, has grown and darkened, no bleeding."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from pages._lib.auth import hash_password

    shared = os.environ.get("MMDERM_BROWSER_HOME")
    if shared:
        home, config = Path(shared).resolve(), os.environ.get("MMDERM_CONFIG", "default")
    else:
        from app_helpers import build_tiny_home

        home, config = build_tiny_home(tmp_path_factory.mktemp("browser_home")), "tiny"
    env = {"MMDERM_CONFIG": config, "MMDERM_ADMIN_PASSWORD_HASH": hash_password(ADMIN_PASSWORD)}
    if shared:  # a copy of a user's home: its audit log is signed with its owner's key file, not the tests' key
        env["MMDERM_AUDIT_KEY"] = ""
    proc, url = start_streamlit(home, env)
    yield url, home, config
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


@pytest.fixture
def page(browser, served, request, tmp_path):
    """A fresh browser context. Waits are for elements; the bound is generous because a loaded 2-core machine can
    take over a minute for a cold server's first analysis. On failure the report gets the page text, a screenshot
    and the server log."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(180_000)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print_failure_context(page, served[1].parent, tmp_path / "failure.png")
    context.close()


def _lesion_file(tmp_path: Path) -> Path:
    from mmcore.synthderm import generate_one

    # SynthDerm seed 21 #5 passes the tiny test model's OOD gate; the demo model's gate flags it (a dark clinical
    # scene), so `make screenshots` on the demo home picks #6 through MMDERM_BROWSER_PHOTO.
    path = tmp_path / "lesion.png"
    generate_one(int(os.environ.get("MMDERM_BROWSER_PHOTO", "5")), seed=21, size=224).image.save(path)
    return path


def _analyse(page, photo: Path, note: str | None) -> None:
    enter_case(page, photo, note)
    page.get_by_role("button", name="Analyse").click()


def _drawn(page) -> None:
    """Wait until the app is idle and every chart and image on the page has drawn (never a fixed sleep)."""
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('[data-testid=stPlotlyChart]')).every(c => c.querySelector("
        "'.main-svg')) && Array.from(document.images).every(i => i.complete)"
    )
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # two frames


def _shot(page, name: str, element=None) -> None:
    """A screenshot of the whole page (or of one element of it): Streamlit scrolls inside its own container, so grow
    the viewport to it."""
    folder = Path(os.environ.get("MMDERM_SCREENSHOTS") or Path(tempfile.gettempdir()) / "mmderm-shots")
    folder.mkdir(parents=True, exist_ok=True)
    _drawn(page)
    height = page.evaluate(
        "() => Math.max(...Array.from(document.querySelectorAll('[data-testid=stMain], section, div'))"
        ".map(e => e.scrollHeight))"
    )
    width = page.viewport_size["width"]
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 7000)})
    _drawn(page)
    (element or page).screenshot(path=str(folder / name))
    page.set_viewport_size({"width": width, "height": 1000})


def test_diagnose_similar_and_report(served, page, tmp_path):
    url, _, _ = served
    page.goto(url)
    page.get_by_text("Research use only").first.wait_for()
    page.get_by_text("Active model").first.wait_for()
    _shot(page, "home.png")

    page.get_by_role("link", name="Diagnose").first.click()
    page.get_by_text("Clinical note").first.wait_for()
    _analyse(page, _lesion_file(tmp_path), NOTE)
    page.get_by_text("Top 3").first.wait_for()
    page.get_by_text("where the model looked").first.wait_for()
    page.get_by_text("Which words moved").first.wait_for()
    page.get_by_role("button", name="Compare").first.wait_for()
    assert page.get_by_text("Research use only").count() >= 1
    _shot(page, "diagnose.png")

    page.get_by_role("link", name="Similar cases").first.click()
    page.get_by_text("Using the photo from Diagnose").first.wait_for()
    page.get_by_role("button", name="Compare").first.wait_for()
    page.get_by_role("button", name="Compare").first.click()
    page.get_by_text("Side by side").first.wait_for()
    page.get_by_text("what drives the similarity").first.wait_for()
    _shot(page, "similar_cases.png")

    page.get_by_role("link", name="Model report").first.click()
    page.get_by_text("Retrieval: precision at k").first.wait_for()
    _shot(page, "model_report.png")
    assert page.get_by_text("Traceback").count() == 0


def test_a_non_lesion_photo_is_flagged_before_any_score(served, page, tmp_path):
    from PIL import Image, ImageDraw

    photo = tmp_path / "page.png"
    sheet = Image.new("RGB", (400, 500), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(25):
        draw.text((20, 15 + 19 * i), "Lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2, fill="black")
    sheet.save(photo)
    url, _, _ = served
    page.goto(f"{url}/Diagnose")
    _analyse(page, photo, None)
    page.get_by_text("Outside what this model knows").first.wait_for()
    page.get_by_text("where the model looked").first.wait_for()  # saliency stays available
    assert page.get_by_text("Top 3").count() == 0 and page.get_by_text("ISIC files it as").count() == 0
    _shot(page, "diagnose_out_of_distribution.png")
    page.get_by_text("Show the scores anyway").click()
    page.get_by_text("Top 3").first.wait_for()
    page.get_by_text("Shown on request").first.wait_for()


def test_similar_cases_by_findings(served, page):
    url, _, _ = served
    page.goto(f"{url}/Similar_cases")
    chooser = page.locator(".st-key-similar_findings input").first
    for name in ("blue-white veil", "atypical pigment network"):
        chooser.click()
        chooser.fill(name)
        page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_text("Images ranked by the model's reading of: blue-white veil, atypical pigment network").wait_for()
    page.locator("[data-testid=stImage]").first.wait_for()
    assert page.get_by_role("button", name="Compare").count() == 0 and page.get_by_text("Traceback").count() == 0
    _shot(page, "similar_findings.png")


def test_admin_url_as_first_request_shows_nothing_without_login(served, page):
    url, _, _ = served
    page.goto(f"{url}/Admin")
    page.get_by_text("This page is for administrators").first.wait_for()
    assert page.get_by_text("Import a dataset").count() == 0
    assert page.get_by_text("Start training").count() == 0
    assert page.get_by_role("link", name="Admin").count() == 0  # no link to it either


def _sign_in_as_admin(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Admin sign-in").first.click()
    page.get_by_role("textbox", name="Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").first.wait_for()


def test_a_confirmed_diagnosis_reaches_the_review_queue_and_the_consult_pdf_downloads(served, page, tmp_path):
    url, _, _ = served
    _sign_in_as_admin(page, url)
    page.get_by_role("link", name="Diagnose").first.click()
    page.get_by_text("Clinical note").first.wait_for()
    _analyse(page, _lesion_file(tmp_path), NOTE)
    page.get_by_text("Findings the model sees").first.wait_for()
    panel = page.locator(".st-key-diagnose_findings_panel")
    panel.get_by_text("Research output, not clinical findings").wait_for()
    panel.get_by_text("Grad-CAM of the").first.wait_for()
    _shot(page, "diagnose_findings.png", element=panel)

    # The consult PDF is built when the button is pressed, then downloaded.
    with page.expect_download() as started:
        page.get_by_role("button", name="Download consult PDF").click()
    pdf = tmp_path / "consult.pdf"
    started.value.save_as(pdf)
    assert started.value.suggested_filename.endswith(".pdf") and pdf.read_bytes().startswith(b"%PDF")
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        assert "Research use only" in text and "Findings the model sees" in text

    # Confirm the diagnosis with consent; the admin finds it in the review queue.
    page.get_by_text("Confirm or correct the diagnosis").first.click()
    page.get_by_text("The patient consented").first.click()
    page.get_by_role("button", name="Submit for review").click()
    page.get_by_text("is waiting for an admin's review").first.wait_for()
    page.get_by_role("link", name="Admin").first.click()
    page.get_by_role("tab", name="Feedback").click()
    page.get_by_text(re.compile(r"#\d+ by admin")).first.wait_for()
    page.get_by_role("button", name="Accept into the library").first.wait_for()
    assert page.get_by_text("Traceback").count() == 0


def test_admin_signs_in_starts_a_job_and_sees_its_curve(served, page):
    url, _, config = served
    _sign_in_as_admin(page, url)
    page.get_by_role("link", name="Admin").first.click()
    page.get_by_role("tab", name="Training").click()
    form = page.get_by_label("Preset")
    form.click()
    page.get_by_role("option", name="tiny").click()
    page.get_by_role("spinbutton", name="Epochs").fill("3")
    page.get_by_role("spinbutton", name="Batch size").fill("8")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started job").first.wait_for()
    page.locator("[data-testid=stMarkdown]").filter(has_text="succeeded").first.wait_for(timeout=400_000)
    page.get_by_text("epochs logged").first.wait_for()
    _shot(page, "admin_training.png")


def test_eight_concurrent_sessions_predict_and_explain_without_errors(served, browser, tmp_path, monkeypatch):
    """Eight browser sessions press Analyse together; the server runs them at once on one shared Predictor."""
    from mmcore.audit import AuditLog

    url, home, _ = served
    if os.environ.get("MMDERM_BROWSER_HOME"):
        monkeypatch.setenv("MMDERM_AUDIT_KEY", "")  # verify with the key the server signs with (its owner's file)
    before = len(AuditLog(home / "audit.jsonl").read(event="predict"))
    photo = _lesion_file(tmp_path)
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(8)]
    pages = []
    for i, context in enumerate(contexts):
        page = context.new_page()
        page.set_default_timeout(180_000)
        page.goto(f"{url}/Diagnose")
        enter_case(page, photo, f"{NOTE} Session {i}.")
        pages.append(page)
    for page in pages:  # all eight requests in flight before any result is awaited
        page.get_by_role("button", name="Analyse").click()
    for page in pages:
        page.get_by_text("where the model looked").first.wait_for()
        page.get_by_text("Which words moved").first.wait_for()
        assert page.get_by_text("Something went wrong").count() == 0
        assert page.get_by_text("Traceback").count() == 0
    for context in contexts:
        context.close()
    log = AuditLog(home / "audit.jsonl")
    assert len(log.read(event="predict")) == before + 8 and log.verify().ok
