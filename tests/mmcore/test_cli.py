"""The CLI contract: --help lists every command; check-image and cases exit codes and JSON shapes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from PIL import Image

from mmcore.cli import HANDLERS, build_parser


def _run(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMDERM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "mmcore", *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in HANDLERS:
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
