"""The command-line contract (mmcore.commands): --help lists every command; check-image and cases exit codes and
JSON shapes; the whole path from import to an index query."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from mmcore.audit import AuditLog
from mmcore.commands import COMMANDS, build_parser, main
from mmcore.concepts import FINDING_NAMES


def _run(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMDERM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "mmcore", *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_check_image_accepts_and_rejects(tmp_path):
    good = tmp_path / "lesion.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (180, 120, 90)).save(buf, format="JPEG")
    good.write_bytes(buf.getvalue())
    ok = _run(["check-image", str(good), "--json"], tmp_path / "home")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) | {"sha256": ""} == {
        "file": str(good),
        "accepted": True,
        "format": "jpeg",
        "width": 30,
        "height": 20,
        "sha256": "",
    }

    gif = tmp_path / "fake.png"
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    bad = _run(["check-image", str(gif)], tmp_path / "home")
    assert bad.returncode == 2 and "GIF" in bad.stdout and "Traceback" not in bad.stderr

    missing = _run(["check-image", str(tmp_path / "nope.jpg")], tmp_path / "home")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr


def test_cases_on_an_empty_home(tmp_path):
    out = _run(["cases", "--json"], tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"total": 0, "source": {}, "dx": {}, "domain": {}, "split": {}, "notes": {}}


def test_bad_config_is_one_line(tmp_path):
    out = _run(["cases", "--set", "train.nope=1"], tmp_path / "home")
    assert out.returncode == 2 and "unknown key train.nope" in out.stderr and "Traceback" not in out.stderr


def _ham_layout(folder, n: int = 60) -> tuple:
    """A dataset in HAM10000's published layout (metadata CSV + JPEGs named by image_id): SynthDerm pictures."""
    from mmcore.synthderm import generate

    images = folder / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"]
    for i, sc in enumerate(generate(n, seed=2, size=64, balanced=True)):
        image_id = f"ISIC_{9000000 + i}"
        sc.image.save(images / f"{image_id}.jpg", quality=90)
        rows.append(f"HAM_{i:07d},{image_id},{sc.case.dx},histo,{sc.case.age or 50},male,back,vidir_modern")
    (folder / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    return folder / "HAM10000_metadata.csv", folder


def test_import_notes_train_promote_and_query_from_the_command_line(tmp_path):
    """A real dataset's path: no drawn findings (so no P1 notes), clinical notes only; every case ends up in the
    image collection and a note finds cases."""
    home = tmp_path / "home"
    metadata, images = _ham_layout(tmp_path / "ham")
    tiny = ["--config", "tiny", "--set", "runtime.threads=1"]
    steps = [
        ["import", "--format", "ham10000", "--metadata", str(metadata), "--images", str(images), "--json"],
        ["notes", "generate", "--strategy", "clinical", "--json", *tiny],
        [
            "train",
            "--promote",
            "--json",
            *tiny,
            "--set",
            'train.note_strategies=["clinical"]',
            "--set",
            "train.epochs=2",
        ],
        ["index", "query", "--text", "new dark lesion on the back, grew over months", "--k", "5", "--json", *tiny],
        ["index", "query", "--text", "itchy pink patch", "--modality", "text", "--k", "3", "--json", *tiny],
    ]
    outputs = []
    for argv in steps:
        out = _run(argv, home)
        assert out.returncode == 0, (argv, out.stderr[-2000:])
        outputs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    imported, notes, trained, image_hits, note_hits = outputs
    assert imported["imported"] == 60 and notes["written"] == 60
    assert len(image_hits["hits"]) == 5 and image_hits["modality"] == "image"
    assert len(note_hits["hits"]) == 3 and all(h["case_id"].startswith("ham10000:") for h in note_hits["hits"])
    promoted = AuditLog(home / "audit.jsonl").read(event="promote")[-1]
    assert promoted["model_version"] == trained["version"]
    assert promoted["indexed_image"] == promoted["indexed_text"] == promoted["cases"] == 60
    models = json.loads(_run(["models", "list", "--json", *tiny], home).stdout)
    assert models["active"] == trained["version"] and models["versions"][0]["evaluated"] is True


def _text_page(path) -> None:
    """A photographed page of text: nothing like a skin lesion."""
    from PIL import ImageDraw

    page = Image.new("RGB", (400, 500), "white")
    draw = ImageDraw.Draw(page)
    for i in range(25):
        draw.text((20, 15 + 19 * i), "Lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2, fill="black")
    page.save(path)


def test_predict_json_keeps_its_contract(tiny_home, tmp_path, monkeypatch, capsys):
    from mmcore.cases import CaseStore

    with CaseStore(tiny_home) as store:  # a held-out case of the kind the model learned from, with its note
        case = store.cases(split="test", with_notes=True)[0]
        lesion, note = store.image_path(case), case.notes["clinical"]
    page = tmp_path / "page.png"
    _text_page(page)
    monkeypatch.setenv("MMDERM_HOME", str(tiny_home))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", "tiny"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    keys = {
        "model_version",
        "modality",
        "top",
        "probabilities",
        "calibrated",
        "in_distribution",
        "ood_score",
        "ood_threshold",
        "reasons",
        "warnings",
        "findings",
    }
    code, out, err = run("predict", str(lesion), "--note", note, "--json")
    assert code == 0, err
    ok = json.loads(out)
    assert set(ok) == keys and ok["modality"] == "fused" and ok["calibrated"] is True
    assert ok["in_distribution"] is True and ok["reasons"] == [] and ok["ood_score"] <= ok["ood_threshold"]
    assert sum(ok["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert [t["dx"] for t in ok["top"]] == sorted(ok["probabilities"], key=ok["probabilities"].get, reverse=True)[:3]
    assert all(t["malignancy"] in ("benign", "malignant", "indeterminate") for t in ok["top"])
    assert list(ok["findings"]) == list(FINDING_NAMES) and all(0 <= v <= 1 for v in ok["findings"].values())

    code, out, err = run("predict", str(page), "--json")
    assert code == 0, err  # a verdict was produced: exit 0, in or out of distribution
    verdict = json.loads(out)
    assert set(verdict) == keys and verdict["in_distribution"] is False and verdict["reasons"]
    code, text, _ = run("predict", str(page))
    assert code == 0 and text.startswith("OUT OF DISTRIBUTION") and "%" not in text  # no scores without --json

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    code, _, err = run("predict", str(bad))
    assert code == 2 and err.count("\n") == 1 and "not an image format we recognise" in err
    entries = [e for e in AuditLog(tiny_home / "audit.jsonl").read(event="predict") if e["user"].startswith("os:")]
    code, out, _ = run("predict", str(lesion), "--note", "qwx zvbn plok", "--json")
    scored = json.loads(out)  # a note the model cannot read is left out; the photo is still scored
    assert scored["modality"] == "image" and scored["in_distribution"] is True
    assert any(w.startswith("The note was not used") for w in scored["warnings"])
    assert [e["in_distribution"] for e in entries[-3:]] == [True, False, False]
    code, out, _ = run("predict", "--note", note, "--json")
    assert code == 0 and json.loads(out)["findings"] is None  # a note alone has no photo to read findings from
