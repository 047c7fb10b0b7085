"""Append-only, hash-chained audit log (JSON lines): every prediction, import, training and promotion.

Each entry carries the SHA-256 of the previous entry, so an edited or deleted line breaks the chain and `verify`
says where. Entries hold hashes of inputs, never a note's text, an image or EXIF: no PHI in logs.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

GENESIS = "0" * 64
# Fields that must never reach the log; `append` refuses them rather than trusting every caller.
FORBIDDEN = {"note", "text", "image", "image_bytes", "exif", "name", "patient_name"}


def sha256_text(text: str | None) -> str:
    """SHA-256 of a note's text ("" for no note): what the log keeps instead of the text."""
    return hashlib.sha256(text.encode()).hexdigest() if text else ""


ACTING_USER_ENV = "MMDERM_ACTING_USER"  # set by the job supervisor: the signed-in user who started the job


def acting_user() -> str:
    """Who a command-line action is done for, as the audit log records it: the app user who started the job, else
    the operating-system user running the command ("os:<login name>")."""
    if os.environ.get(ACTING_USER_ENV):
        return os.environ[ACTING_USER_ENV]
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (some containers)
        name = f"uid{os.getuid()}"
    return f"os:{name}"


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_line: int | None = None  # 1-based
    reason: str = ""


class AuditLog:
    """A JSON-lines file; appends from several processes are serialised with a file lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")

    def append(self, event: str, user: str = "", **fields: Any) -> dict[str, Any]:
        """Append one entry chained to the last; returns it."""
        bad = FORBIDDEN & set(fields)
        if bad:
            raise ValueError(f"audit entries must not hold {', '.join(sorted(bad))}: log a hash instead")
        with self._lock:
            prev = self._last_hash()
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": event,
                "user": user,
                **fields,
                "prev": prev,
            }
            entry["hash"] = _entry_hash(entry)
            with self.path.open("a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def _last_hash(self) -> str:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return GENESIS
        with self.path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 65536))
            last = f.read().splitlines()[-1]
        return json.loads(last)["hash"]

    def read(self, event: str | None = None, user: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        """Entries, newest last, optionally filtered by event and user; limit keeps the newest."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            entry = json.loads(line)
            if (event is None or entry.get("event") == event) and (user is None or entry.get("user") == user):
                out.append(entry)
        return out[-limit:] if limit else out

    def verify(self) -> ChainReport:
        """Walk the chain: every entry must hash to its `hash` and point at the one before it."""
        if not self.path.exists():
            return ChainReport(ok=True, entries=0)
        prev = GENESIS
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                return ChainReport(False, len(lines), i, "line is not valid JSON")
            if entry.get("prev") != prev:
                return ChainReport(False, len(lines), i, "does not follow the entry before it (deleted or reordered)")
            if _entry_hash(entry) != entry.get("hash"):
                return ChainReport(False, len(lines), i, "content changed after it was written")
            prev = entry["hash"]
        return ChainReport(ok=True, entries=len(lines))
