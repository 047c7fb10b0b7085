"""Append-only, hash-chained and keyed audit log (JSON lines): every prediction, import, job, sign-in and promotion.

Each entry carries the SHA-256 of the entry before it and an HMAC-SHA256 under a key kept outside the data home; each
append also updates an anchor beside the log (entry count and last hash, keyed too, in SQLite). So `verify` names the
first entry that was edited, reordered, deleted or rewritten with a recomputed chain, and a log cut short, for as long
as the key stays secret. A torn last line (a crash, a full disk) is set aside and recorded by the next append, never
fatal. Entries hold hashes of inputs, never a note's text, an image or EXIF: no PHI in logs.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

GENESIS = "0" * 64
# Fields that must never reach the log; `append` refuses them rather than trusting every caller.
FORBIDDEN = {"note", "text", "image", "image_bytes", "exif", "name", "patient_name"}
KEY_ENV = "MMDERM_AUDIT_KEY"  # the key itself (at least 16 characters), e.g. from a secret store
KEY_FILE_ENV = "MMDERM_AUDIT_KEY_FILE"  # else a key file, 0600, outside the data home; made on first use
ACTING_USER_ENV = "MMDERM_ACTING_USER"  # set by the job supervisor: the signed-in user who started the job
SYSTEM_USER = "system"  # who writes the log's own entries (recovered, anchored)


class AuditKeyError(RuntimeError):
    """No usable audit key; the message says what to set."""


def sha256_text(text: str | None) -> str:
    """SHA-256 of a note's text ("" for no note): what the log keeps instead of the text."""
    return hashlib.sha256(text.encode()).hexdigest() if text else ""


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


def default_key_file() -> Path:
    """~/.config/mmderm/audit.key (XDG_CONFIG_HOME respected): outside any data home by default."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mmderm" / "audit.key"


def load_key(home: Path) -> bytes:
    """The HMAC key: MMDERM_AUDIT_KEY, else the key file (MMDERM_AUDIT_KEY_FILE or default_key_file()), created with
    32 random bytes and mode 0600 when missing. AuditKeyError when it is too short, inside the data home (whoever
    can rewrite the log could then re-sign it) or readable by others."""
    raw = os.environ.get(KEY_ENV, "")
    if raw:
        if len(raw) < 16:
            raise AuditKeyError(f"{KEY_ENV} must be at least 16 characters")
        return raw.encode()
    path = Path(os.environ.get(KEY_FILE_ENV) or default_key_file()).expanduser().absolute()
    if path.resolve().is_relative_to(Path(home).resolve()):
        raise AuditKeyError(f"the audit key {path} must live outside the data home {home}")
    if not path.exists():
        _create_key(path)
    if path.stat().st_mode & 0o077:
        raise AuditKeyError(f"the audit key {path} must be readable by its owner only (chmod 600 {path})")
    key = path.read_bytes().strip()
    if len(key) < 16:
        raise AuditKeyError(f"the audit key {path} holds fewer than 16 bytes")
    return key


def _create_key(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # atomic and never overwrites: two processes starting at once agree on one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    except OSError as e:
        raise AuditKeyError(
            f"no audit key: cannot create {path} ({e.strerror}); set {KEY_ENV} or {KEY_FILE_ENV}"
        ) from None


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _anchor_mac(key: bytes, entries: int, head: str, first_signed: int) -> str:
    return _mac(key, f"anchor:{entries}:{head}:{first_signed}")


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_line: int | None = None  # 1-based; one past the last line when entries are missing from the end
    reason: str = ""
    signed: int = 0  # entries with a valid HMAC (a log written before keying starts with unsigned ones)


class AuditLog:
    """A JSON-lines file; appends from several processes are serialised with a file lock and fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.anchor_path = self.path.with_name(self.path.name + ".anchor.sqlite")
        self.torn_path = self.path.with_name(self.path.name + ".torn")
        self._lock = FileLock(str(self.path) + ".lock")
        self._writer: sqlite3.Connection | None = None  # kept open: closing the last connection checkpoints (fsync)

    def append(self, event: str, user: str = "", **fields: Any) -> dict[str, Any]:
        """Append one entry chained to the last, signed and anchored; returns it."""
        bad = FORBIDDEN & set(fields)
        if bad:
            raise ValueError(f"audit entries must not hold {', '.join(sorted(bad))}: log a hash instead")
        key = load_key(self.path.parent)
        with self._lock:
            prev, count, first_signed = self._prepare_tail(key)
            entry = self._write(key, prev, event, user, fields)
            self._save_anchor(key, count + 1, entry["hash"], first_signed)
        return entry

    def _write(self, key: bytes, prev: str, event: str, user: str, fields: dict[str, Any]) -> dict[str, Any]:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
            "user": user,
            **fields,
            "prev": prev,
        }
        entry["hash"] = _entry_hash(entry)
        entry["mac"] = _mac(key, entry["hash"])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)  # on disk before anyone is told it happened
        finally:
            os.close(fd)
        return entry

    def _prepare_tail(self, key: bytes) -> tuple[str, int, int]:
        """(hash of the last entry, entries in the log, line of the first signed entry) after setting a torn tail aside
        and checking the anchor; what it finds is recorded as entries of the log's own (audit_recovered,
        audit_anchored, audit_anchor_mismatch)."""
        last, cut = self._tail()
        torn = b""
        if cut is not None:
            with self.path.open("rb") as f:
                f.seek(cut)
                torn = f.read()
            with self.torn_path.open("ab") as f:  # kept, not destroyed: it may matter to whoever investigates
                f.write(torn + b"\n")
                os.fsync(f.fileno())
            os.truncate(self.path, cut)
        prev = last["hash"] if last else GENESIS
        anchor = self._read_anchor(writing=True)
        valid = anchor is not None and self._anchor_valid(key, anchor)
        if valid and anchor["head"] == prev:
            count, first_signed = anchor["entries"], anchor["first_signed"]
        else:
            lines = list(self._lines())
            count = len(lines)
            first_signed = next((i for i, raw in enumerate(lines, 1) if "mac" in _parse(raw)), count + 1)
            if anchor is None:
                if count:  # a log written before anchoring (or whose anchor was deleted): anchored from here on
                    prev = self._write(key, prev, "audit_anchored", SYSTEM_USER, {"found_entries": count})["hash"]
                    count += 1
            elif valid and self._one_past(anchor, lines):
                first_signed = anchor["first_signed"]
            else:
                note = {"anchored_entries": anchor.get("entries"), "found_entries": count}
                prev = self._write(key, prev, "audit_anchor_mismatch", SYSTEM_USER, note)["hash"]
                count += 1
        if cut is not None:
            note = {
                "torn_bytes": len(torn),
                "torn_sha256": hashlib.sha256(torn).hexdigest(),
                "kept_in": self.torn_path.name,
            }
            prev = self._write(key, prev, "audit_recovered", SYSTEM_USER, note)["hash"]
            count += 1
        return prev, count, first_signed

    @staticmethod
    def _one_past(anchor: dict[str, Any], lines: list[bytes]) -> bool:
        """A crash between writing an entry and its anchor leaves exactly one entry after the anchored one."""
        return len(lines) == anchor["entries"] + 1 and _parse(lines[-2]).get("hash") == anchor["head"]

    def _tail(self) -> tuple[dict[str, Any] | None, int | None]:
        """(the last entry, the offset where a torn tail starts, or None when the log ends cleanly). A torn tail is
        whatever follows the last newline, and any complete lines at the end that are no entry."""
        if not self.path.exists():
            return None, None
        size = self.path.stat().st_size
        for start in (max(0, size - 65536), 0):  # the last 64 kB hold the last entry, unless that is all garbage
            with self.path.open("rb") as f:
                f.seek(start)
                chunk = f.read()
            lines = chunk.split(b"\n")
            pos = size - len(lines[-1])  # just after the last newline
            cut = pos if lines[-1] else None
            for line in reversed(lines[1:-1] if start else lines[:-1]):  # a chunk's first piece may be a partial line
                entry = _parse(line)
                if entry:
                    return entry, cut
                pos -= len(line) + 1
                cut = pos
            if start == 0:
                return None, cut
        return None, None

    def _lines(self) -> Iterator[bytes]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for raw in f:
                yield raw.rstrip(b"\n")

    def _read_anchor(self, writing: bool = False) -> dict[str, Any] | None:
        """The anchor row; None when there is none, {} when the anchor cannot be read. `writing`: under the lock,
        through the connection appends keep open."""
        if not self.anchor_path.exists():
            return None
        try:
            if writing:
                row = self._anchor_writer().execute("SELECT entries, head, first_signed, mac FROM anchor").fetchone()
            else:
                with contextlib.closing(self._anchor_db()) as db:
                    row = db.execute("SELECT entries, head, first_signed, mac FROM anchor WHERE id = 1").fetchone()
        except sqlite3.Error:
            return {}
        return dict(zip(("entries", "head", "first_signed", "mac"), row, strict=True)) if row else None

    def _anchor_writer(self) -> sqlite3.Connection:
        if self._writer is None:  # used under the file lock only
            self._writer = self._anchor_db()
        return self._writer

    def _anchor_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.anchor_path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the log itself is fsynced; this row follows it, a commit costs ~0
        db.execute(
            "CREATE TABLE IF NOT EXISTS anchor (id INTEGER PRIMARY KEY CHECK (id = 1), entries INTEGER NOT NULL, "
            "head TEXT NOT NULL, first_signed INTEGER NOT NULL, mac TEXT NOT NULL)"
        )
        return db

    @staticmethod
    def _anchor_valid(key: bytes, anchor: dict[str, Any]) -> bool:
        fields = (anchor.get("entries"), anchor.get("head"), anchor.get("first_signed"))
        if not (isinstance(fields[0], int) and isinstance(fields[1], str) and isinstance(fields[2], int)):
            return False
        return hmac.compare_digest(str(anchor.get("mac", "")), _anchor_mac(key, *fields))

    def _save_anchor(self, key: bytes, entries: int, head: str, first_signed: int) -> None:
        """Count, last hash and first signed line, keyed: the row every append replaces."""
        mac = _anchor_mac(key, entries, head, first_signed)
        self._anchor_writer().execute(
            "INSERT OR REPLACE INTO anchor (id, entries, head, first_signed, mac) VALUES (1, ?, ?, ?, ?)",
            (entries, head, first_signed, mac),
        )

    def read(self, event: str | None = None, user: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        """Entries, newest last, optionally filtered by event and user; limit keeps the newest. A damaged line is
        listed as a "damaged_line" entry (with its line number) when nothing is filtered, never raised."""
        out = []
        for number, raw in enumerate(self._lines(), start=1):
            entry = _parse(raw)
            if not entry:
                entry = {"event": "damaged_line", "user": "", "line": number}
                if event is not None or user is not None:
                    continue
            if (event is None or entry.get("event") == event) and (user is None or entry.get("user") == user):
                out.append(entry)
        return out[-limit:] if limit else out

    def verify(self) -> ChainReport:
        """Walk the log: every entry must parse, hash to its `hash`, point at the one before it and, from the first
        signed line the anchor records, carry a valid HMAC; the anchor must match the log's length and last hash.
        The report names the first bad entry (one past the end when entries were cut from it)."""
        lines = list(self._lines())
        anchor = self._read_anchor()
        if not lines and not anchor:
            return ChainReport(ok=True, entries=0)
        try:
            key = load_key(self.path.parent)
        except AuditKeyError as e:
            return ChainReport(False, len(lines), None, f"cannot check signatures: {e}")
        valid = anchor is not None and self._anchor_valid(key, anchor)
        first_signed = anchor["first_signed"] if valid else 1
        n, prev, signed, mismatches = len(lines), GENESIS, 0, []
        for i, raw in enumerate(lines, start=1):
            entry = _parse(raw)
            if not entry:
                return ChainReport(False, n, i, "damaged line (not a JSON entry), e.g. a torn write", signed)
            if entry.get("prev") != prev:
                return ChainReport(False, n, i, "does not follow the entry before it (deleted or reordered)", signed)
            if _entry_hash(entry) != entry.get("hash"):
                return ChainReport(False, n, i, "content changed after it was written", signed)
            if "mac" in entry:
                if not hmac.compare_digest(str(entry["mac"]), _mac(key, entry["hash"])):
                    return ChainReport(False, n, i, "signature does not match: rewritten, or another key", signed)
                signed += 1
            elif signed or i >= first_signed:
                return ChainReport(False, n, i, "unsigned entry where a signed one is due: rewritten", signed)
            if entry.get("event") == "audit_anchor_mismatch":
                mismatches.append(i)
            prev = entry["hash"]
        if anchor is None:
            return ChainReport(False, n, None, "no anchor beside the log: cannot tell whether entries were cut", signed)
        if not valid:
            return ChainReport(False, n, None, "the anchor's signature does not match: it was edited", signed)
        anchored = anchor["entries"]
        if n < anchored:
            reason = f"{anchored - n} entries deleted from the end ({anchored} were written)"
            return ChainReport(False, n, n + 1, reason, signed)
        if _parse(lines[anchored - 1]).get("hash") != anchor["head"] or n > anchored + 1:
            return ChainReport(False, n, anchored, "not the entry last anchored: the log was replaced", signed)
        if mismatches:
            reason = "entries were lost before this line (the log was cut short or replaced); recorded here"
            return ChainReport(False, n, mismatches[0], reason, signed)
        return ChainReport(ok=True, entries=n, signed=signed)


def _parse(raw: bytes) -> dict[str, Any]:
    """The entry on a line, or {} when the line is not one (torn, garbage)."""
    try:
        entry = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return entry if isinstance(entry, dict) and "hash" in entry else {}
