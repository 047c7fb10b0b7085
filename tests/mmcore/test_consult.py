"""The consult PDF on the tiny demo home, read back through poppler: the disclaimer on every page, the verdict first,
the version, the top class, the inputs' hashes; a first page that is not blank; the export in the audit log; the
`report` command."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcore import DISCLAIMER
from mmcore.audit import AuditLog, sha256_text
from mmcore.cases import CaseStore
from mmcore.commands import main
from mmcore.config import Config, load_config
from mmcore.consult import SHOWN_ON_REQUEST, consult_pdf
from mmcore.predictor import Predictor

# Without poppler the tests are skipped on a workstation, never in CI (where they fail on the missing tool).
pytestmark = pytest.mark.skipif(
    shutil.which("pdftotext") is None and not os.environ.get("CI"), reason="poppler-utils: make system-deps"
)


@pytest.fixture
def cfg(tiny_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A private copy of the tiny demo home: every export writes to its audit log."""
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home, ignore=shutil.ignore_patterns("*.lock", "jobs"))
    monkeypatch.setenv("MMDERM_HOME", str(home))
    return load_config(None, env={"MMDERM_HOME": str(home)})


def _case(cfg: Config, predictor: Predictor) -> tuple[bytes, str]:
    """A held-out photo the model calls in distribution, with the note a clinician would type."""
    with CaseStore(cfg.home) as store:
        for case in store.cases(split="test", with_notes=True):
            photo, note = (store.home / case.image_path).read_bytes(), case.notes["clinical"]
            if predictor.check(photo, note).in_distribution:
                return photo, note
    raise AssertionError("no test case of the tiny home is in distribution")


def _grey() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="PNG")  # no lesion, no skin: unlike every case
    return buf.getvalue()


def _pages(pdf: bytes, tmp_path: Path) -> list[str]:
    """The PDF's text per page as pdftotext reads it, whitespace collapsed."""
    path = tmp_path / "consult.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    return [re.sub(r"\s+", " ", page).strip() for page in text.split("\f") if page.strip()]


def _first_page(pdf: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "first.pdf"
    path.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(path), str(tmp_path / "page")], check=True
    )
    (png,) = tmp_path.glob("page*.png")
    return np.asarray(Image.open(png).convert("L"), dtype=np.float32)


def test_the_report_holds_the_analysis_with_the_disclaimer_on_every_page(cfg, tmp_path):
    predictor = Predictor.from_config(cfg)
    photo, note = _case(cfg, predictor)
    prediction = predictor.predict(photo, note)
    pdf = consult_pdf(predictor, photo, note, user="dr.consult", prediction=prediction)

    pages = _pages(pdf, tmp_path)
    disclaimer = re.sub(r"\s+", " ", DISCLAIMER)
    assert len(pages) >= 2 and all(disclaimer in page and predictor.version in page for page in pages)
    text = " ".join(pages)
    assert text.index("The inputs are like the cases this model learned from") < text.index("Model scores per modality")
    assert f"Top class (image + note): {prediction.top[0].name}" in text
    for heading in ("Where the model looked", "Which words moved the note's score", "Findings the model sees"):
        assert heading in text
    assert "Similar past cases" in text and "similarity" in text
    assert text.index("Trained on: " + predictor.card.trained_on) < text.index("Model version:")
    assert prediction.image_sha256 in text and sha256_text(note) in text

    page = _first_page(pdf, tmp_path)
    assert page.var() > 500 and (page < 128).mean() > 0.01  # text, the photo and its overlay: not a blank page

    (entry,) = AuditLog(cfg.audit_path).read(event="export")
    assert entry["user"] == "dr.consult" and entry["model_version"] == predictor.version
    assert entry["image_sha256"] == prediction.image_sha256 and entry["note_sha256"] == sha256_text(note)
    assert entry["report_sha256"] == hashlib.sha256(pdf).hexdigest() and entry["scores_shown"] is True
    assert note not in cfg.audit_path.read_text()  # hashes, never the note


def test_an_out_of_distribution_photo_is_said_so_first_and_its_scores_withheld(cfg, tmp_path):
    predictor = Predictor.from_config(cfg)
    assert predictor.check(_grey(), None).in_distribution is False
    text = " ".join(_pages(consult_pdf(predictor, _grey(), user="dr.consult"), tmp_path))
    title = "mmderm consult report (research use only)"
    verdict = text.index("Outside what this model knows.")
    assert verdict < text.index("Model scores per modality") and text[: text.index(title)] == ""
    assert "Scores withheld" in text and "Top class" not in text and "Withheld with the scores" in text
    assert "not similar in any clinical sense" in text

    shown = " ".join(_pages(consult_pdf(predictor, _grey(), user="dr.consult", show_scores_anyway=True), tmp_path))
    assert shown.index("Outside what this model knows.") < shown.index(SHOWN_ON_REQUEST) < shown.index("Top class")
    exports = AuditLog(cfg.audit_path).read(event="export")
    assert [(e["in_distribution"], e["scores_shown"]) for e in exports] == [(False, False), (False, True)]


def test_the_report_command_writes_the_pdf(cfg, tmp_path, capsys):
    predictor = Predictor.from_config(cfg)
    photo, note = _case(cfg, predictor)
    (tmp_path / "lesion.png").write_bytes(photo)
    out = tmp_path / "out" / "consult.pdf"
    out.parent.mkdir()
    code = main(["report", str(tmp_path / "lesion.png"), "--note", note, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["out"] == str(out) and payload["model_version"] == predictor.version
    assert out.read_bytes()[:5] == b"%PDF-" and payload["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not list(out.parent.glob(".*.tmp"))
    (entry,) = AuditLog(cfg.audit_path).read(event="export")
    assert entry["user"].startswith("os:") and entry["report_sha256"] == payload["sha256"]

    assert main(["report", str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
