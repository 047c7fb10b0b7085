"""The audit log: chained entries, tamper detection, no PHI fields, safe appends from several processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmcore.audit import AuditLog, sha256_text


def test_chain_verifies_and_detects_edits_and_deletions(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(5):
        log.append(
            "predict",
            user="dr_a",
            model_version="v1",
            image_sha256=f"{i:064x}",
            note_sha256=sha256_text(f"note {i}"),
            top_class="nv",
        )
    assert log.verify().ok and log.verify().entries == 5
    assert [e["user"] for e in log.read(event="predict")] == ["dr_a"] * 5

    lines = log.path.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["top_class"] = "mel"
    log.path.write_text("\n".join([*lines[:2], json.dumps(edited), *lines[3:]]) + "\n")
    report = log.verify()
    assert not report.ok and report.first_bad_line == 3 and "changed" in report.reason

    log.path.write_text("\n".join([*lines[:1], *lines[2:]]) + "\n")
    report = log.verify()
    assert not report.ok and report.first_bad_line == 2 and "deleted" in report.reason


def test_phi_fields_are_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match="must not hold note"):
        log.append("predict", note="65 y/o Jane Doe, itchy lesion")
    assert not log.path.exists() or log.path.read_text() == ""


_APPEND = """
import sys
from mmcore.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(20):
    log.append("predict", user=sys.argv[2], n=i)
"""


def test_concurrent_processes_keep_one_chain(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND, path, f"u{k}"]) for k in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    report = AuditLog(path).verify()
    assert report.ok and report.entries == 60
