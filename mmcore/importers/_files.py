"""An import's image files into the case store: decoded by a pool of worker threads (Pillow and hashlib release the
GIL while they decode, encode and hash), a bounded window of files in flight, each finished batch recorded in the
store's image_files table. A file decoded before, by an earlier import or by an interrupted run of this one, is not
decoded again: while its path, size, mtime, ctime and inode are unchanged it is not even read, and when only those
changed its bytes are hashed and compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mmcore.cases import CaseStore
from mmcore.images import load_image
from mmcore.importers._common import read_image_file_stat

BATCH = 256  # files recorded in the image_files table per transaction
IN_FLIGHT_PER_WORKER = 4  # files submitted ahead per worker: keeps each busy, holds few pictures in memory
MAX_WORKERS = 4  # each decode may hold 8 bytes per pixel of intake.max_pixels for a moment (400 MB at 50 MP)


def default_workers() -> int:
    """One decoding thread per core, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@dataclass(frozen=True)
class ImageFile:
    """A row of the store's image_files table: a file as it was on disk when decoded, and the image it became."""

    path_sha256: str  # SHA-256 of the resolved path
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    file_sha256: str  # of the file's bytes
    image_sha256: str  # of its decoded pixels (the case store's content address)
    image_path: str  # the stored image, relative to the home
    pixels: int  # width x height, checked against the pixel cap before the row is reused

    def same_file(self, st: os.stat_result) -> bool:
        """True while the file on disk is the one this row describes (size, mtime, ctime and inode unchanged)."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        )


@dataclass(frozen=True)
class Refused:
    """A file that could not be read or decoded: `error` says why (the importer words the row's rejection)."""

    error: Exception


@dataclass(frozen=True)
class Stored:
    """A file's stored image; `row` is new or changed information for the image_files table (None: unchanged)."""

    image_sha256: str
    image_path: str
    row: ImageFile | None
    decoded: bool  # False: reused from an earlier decode of these bytes


def path_key(path: Path) -> str:
    """What image_files keys a file by: the SHA-256 of its resolved path (the name itself may be data)."""
    return hashlib.sha256(os.fsencode(path)).hexdigest()


def store_image_files(
    store: CaseStore,
    files: Sequence[Path],
    root: Path,
    max_bytes: int,
    max_pixels: int,
    *,
    workers: int | None = None,
    written: set[str],
    progress: Callable[[int, int], None] | None = None,
) -> list[Stored | Refused]:
    """Store the image of each file (resolved paths inside `root`), in order: Stored, or Refused for a file that could
    not be read or decoded. Image paths this call wrote go into `written` (the caller removes them if it fails).

    An exception of the store (writing an image or a table row) ends the call after the running decodes finish; the
    batches recorded before it stay recorded, so the next run decodes only what they did not cover.
    """
    workers = workers or default_workers()
    results: list[Stored | Refused | None] = [None] * len(files)
    queue: deque[tuple[int, Future | Stored]] = deque()
    pending_rows: list[ImageFile] = []
    settled = 0

    def settle() -> None:
        """Take the oldest result (waiting for it), record its row, report progress."""
        nonlocal settled
        i, item = queue.popleft()
        outcome = item.result() if isinstance(item, Future) else item
        results[i] = outcome
        if isinstance(outcome, Stored) and outcome.row is not None:
            pending_rows.append(outcome.row)
        if len(pending_rows) >= BATCH:
            _remember(store, pending_rows)
        settled += 1
        if progress is not None:
            progress(settled, len(files))

    pool = ThreadPoolExecutor(workers, thread_name_prefix="mmderm-import")
    try:
        in_flight = workers * IN_FLIGHT_PER_WORKER
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            keys = [path_key(p) for p in chunk]
            known = {k: ImageFile(**row) for k, row in store.image_files("path_sha256", keys).items()}
            for offset, (path, key) in enumerate(zip(chunk, keys, strict=True)):
                row = known.get(key)
                unchanged = _unchanged(store, path, row, max_bytes, max_pixels)
                if unchanged is not None:
                    queue.append((start + offset, unchanged))
                else:
                    job = pool.submit(_store_one, store, path, key, row, root, max_bytes, max_pixels, written)
                    queue.append((start + offset, job))
                while len(queue) > in_flight:
                    settle()
        while queue:
            settle()
        _remember(store, pending_rows)
    except (KeyboardInterrupt, SystemExit):  # a cancel: keep what is decoded for the next run (an error does not)
        _remember(store, pending_rows)
        raise
    finally:
        # On an error, no decode may still be writing when the caller cleans up what this import wrote.
        pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]  # every slot was settled


def _remember(store: CaseStore, rows: list[ImageFile]) -> None:
    """Record a batch of decoded files in the store's image_files table, and forget them here."""
    store.remember_image_files([dataclasses.asdict(r) for r in rows])
    rows.clear()


def _unchanged(store: CaseStore, path: Path, row: ImageFile | None, max_bytes: int, max_pixels: int) -> Stored | None:
    """The stored image of a file unchanged since it was decoded (nothing read), or None when it must be looked at."""
    if row is None or row.size > max_bytes or row.pixels > max_pixels:
        return None
    try:
        st = os.lstat(path)  # lstat: a file replaced by a symlink is no longer the file we decoded
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not row.same_file(st) or not (store.home / row.image_path).is_file():
        return None
    return Stored(row.image_sha256, row.image_path, None, decoded=False)


def _store_one(
    store: CaseStore,
    path: Path,
    key: str,
    known: ImageFile | None,
    root: Path,
    max_bytes: int,
    max_pixels: int,
    written: set[str],
) -> Stored | Refused:
    """Read a file; reuse the stored image of the same bytes, else decode it through the intake and store it."""
    try:
        data, st = read_image_file_stat(path, root, max_bytes)
        file_sha = hashlib.sha256(data).hexdigest()
        seen = dict(path_sha256=key, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino)
        same = known if known is not None and known.file_sha256 == file_sha else _by_content(store, file_sha)
        reusable = same is not None and len(data) <= max_bytes and same.pixels <= max_pixels
        if reusable and (store.home / same.image_path).is_file():
            return Stored(same.image_sha256, same.image_path, dataclasses.replace(same, **seen), decoded=False)
        decoded = load_image(data, max_bytes, max_pixels, throttled=False)  # the pool bounds concurrent decodes
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - ImageRejected, OSError, CaseError, or whatever a hostile file raised
        return Refused(e)
    sha, rel = store.put_image(decoded)  # the store's errors are ours: they end the import
    written.add(rel)
    width, height = decoded.size
    row = ImageFile(**seen, file_sha256=file_sha, image_sha256=sha, image_path=rel, pixels=width * height)
    return Stored(sha, rel, row, decoded=True)


def _by_content(store: CaseStore, file_sha256: str) -> ImageFile | None:
    """A file decoded before with these very bytes (at another path, or at this one before it was touched)."""
    row = store.image_files("file_sha256", [file_sha256]).get(file_sha256)
    return ImageFile(**row) if row is not None else None
