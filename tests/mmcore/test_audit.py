"""The audit log: chained and keyed entries, tamper and truncation detection, torn lines set aside, no PHI fields,
safe appends from several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmcore.audit import AuditKeyError, AuditLog, sha256_text


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


# ---- issue 13: a torn line never blocks the log (item 6); the chain is keyed and anchored (item 7) ----


@pytest.fixture
def keyed(monkeypatch, tmp_path):
    """A key of this test's own, outside its data home."""
    monkeypatch.setenv("MMDERM_AUDIT_KEY", "k" * 32)
    monkeypatch.delenv("MMDERM_AUDIT_KEY_FILE", raising=False)
    home = tmp_path / "home"
    log = AuditLog(home / "audit.jsonl")
    for i in range(5):
        log.append("predict", user="dr_a", n=i)
    return log


def test_a_torn_last_line_is_set_aside_and_appends_go_on(keyed):
    """Before: a half-written last line made every later append raise JSONDecodeError (Diagnose showed no scores)."""
    with keyed.path.open("ab") as f:
        f.write(b'{"event": "predict", "time": "2024-01-0')  # a crash part way through a write
    assert [e["event"] for e in keyed.read()][-1] == "damaged_line"  # read reports it, never raises
    report = keyed.verify()
    assert not report.ok and report.first_bad_line == 6 and "damaged" in report.reason

    entry = keyed.append("predict", user="dr_b", n=6)
    events = [e["event"] for e in keyed.read()]
    assert events[-2:] == ["audit_recovered", "predict"] and entry["user"] == "dr_b"
    recovered = keyed.read(event="audit_recovered")[0]
    assert recovered["torn_bytes"] == 39 and recovered["kept_in"] == "audit.jsonl.torn"
    assert keyed.torn_path.read_bytes().startswith(b'{"event": "predict", "time": "2024-01-0')
    assert keyed.verify().ok and keyed.verify().entries == 7


def test_a_garbage_line_at_the_end_is_set_aside_too(keyed):
    with keyed.path.open("ab") as f:  # how the old code left a torn line: the next entry glued to it
        f.write(b'{"event": "pre{"event": "x"}\n')
    keyed.append("predict", user="dr_b")
    assert keyed.verify().ok
    assert [e["event"] for e in keyed.read()][-2:] == ["audit_recovered", "predict"]


def test_appends_are_fsynced(keyed, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    keyed.append("predict", user="dr_a")
    assert synced


def test_deleting_the_last_entries_or_emptying_the_log_is_detected(keyed):
    lines = keyed.path.read_text().splitlines()
    keyed.path.write_text("\n".join(lines[:3]) + "\n")
    report = keyed.verify()
    assert not report.ok and report.first_bad_line == 4 and "2 entries deleted from the end" in report.reason
    keyed.path.write_text("")
    report = keyed.verify()
    assert not report.ok and report.first_bad_line == 1 and "5 entries deleted" in report.reason


def test_the_next_append_records_a_log_cut_short(keyed):
    lines = keyed.path.read_text().splitlines()
    keyed.path.write_text("\n".join(lines[:3]) + "\n")
    keyed.append("predict", user="dr_a")  # the cut is not papered over by re-anchoring
    report = keyed.verify()
    assert not report.ok and report.first_bad_line == 4 and "lost" in report.reason
    assert keyed.read(event="audit_anchor_mismatch")[0]["anchored_entries"] == 5


def _rewrite(log: AuditLog, change, keep_macs: bool) -> None:
    """What an attacker with write access to the data home (but not the key) can do: edit and re-chain."""
    from mmcore.audit import GENESIS, _entry_hash

    prev, out = GENESIS, []
    for line in log.path.read_text().splitlines():
        entry = json.loads(line)
        change(entry)
        entry["prev"] = prev
        entry["hash"] = _entry_hash(entry)
        if not keep_macs:
            entry.pop("mac", None)
        prev = entry["hash"]
        out.append(json.dumps(entry, sort_keys=True))
    log.path.write_text("\n".join(out) + "\n")


def test_rewriting_every_entry_with_a_recomputed_chain_is_detected(keyed):
    """Before: rewriting every entry and recomputing the SHA-256 chain passed verify."""

    def edit_third(entry):
        if entry["n"] == 2:
            entry["user"] = "someone_else"

    _rewrite(keyed, edit_third, keep_macs=True)
    report = keyed.verify()
    assert not report.ok and report.first_bad_line == 3 and "signature" in report.reason
    _rewrite(keyed, lambda e: None, keep_macs=False)  # signatures stripped: the anchor says they were due
    report = keyed.verify()
    assert not report.ok and report.first_bad_line == 1 and "unsigned" in report.reason


def test_another_key_does_not_verify(keyed, monkeypatch):
    monkeypatch.setenv("MMDERM_AUDIT_KEY", "x" * 32)
    report = keyed.verify()
    assert not report.ok and "signature" in report.reason


def test_the_key_file_is_made_0600_outside_the_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MMDERM_AUDIT_KEY", raising=False)
    key_file = tmp_path / "secrets" / "audit.key"
    monkeypatch.setenv("MMDERM_AUDIT_KEY_FILE", str(key_file))
    log = AuditLog(tmp_path / "home" / "audit.jsonl")
    log.append("sign_in", user="admin")
    assert key_file.stat().st_mode & 0o777 == 0o600 and log.verify().ok
    key_file.chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        log.append("sign_in", user="admin")
    monkeypatch.setenv("MMDERM_AUDIT_KEY_FILE", str(tmp_path / "home" / "audit.key"))
    with pytest.raises(AuditKeyError, match="outside the data home"):
        log.append("sign_in", user="admin")
