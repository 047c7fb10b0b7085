"""The command-line contract (mmcore.commands): --help lists every command; check-image and cases exit codes and
JSON shapes; the whole path from import to an index query."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from PIL import Image

from mmcore.audit import AuditLog
from mmcore.commands import COMMANDS, build_parser


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
        ["train", "--promote", "--json", *tiny, "--set", "train.note_strategies=[\"clinical\"]",
         "--set", "train.epochs=2"],
        ["index", "query", "--text", "new dark lesion on the back, grew over months", "--k", "5", "--json", *tiny],
        ["index", "query", "--text", "itchy pink patch", "--modality", "text", "--k", "3", "--json", *tiny],
    ]  # fmt: skip
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
