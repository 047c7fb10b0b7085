"""Background jobs: a table in SQLite (WAL) and, per job, a supervisor process in its own process group.

`start` validates the command (argparse and config) before anything runs, then launches
`python -m mmcore jobs run <id>`: a supervisor in a new session that runs the real command
(`python -m mmcore <kind> ...`, or `torchrun` for multi-GPU training) as its child, writes heartbeats, the log and
the exit code. The app only reads the table, so an app restart re-attaches to running jobs for free; `reap`
marks jobs whose supervisor died as failed. Cancel sends SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.audit import ACTING_USER_ENV, AuditLog
from mmcore.config import Config, ConfigError, load_config

KINDS = ("import", "synth", "notes", "train", "eval", "index")
REJECTIONS_FILE = "rejections.json"  # an import job's detail, beside its log, mode 0600
ACTIVE = ("queued", "launching", "running", "cancelling")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    pid INTEGER,
    child_pid INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    heartbeat REAL,
    exit_code INTEGER,
    error TEXT NOT NULL DEFAULT '',
    resumed_from INTEGER
);
"""


class JobError(ValueError):
    """A job cannot be started or changed; the message says why."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    args: list[str]
    user: str
    status: str  # queued | launching | running | cancelling | succeeded | failed | cancelled
    pid: int | None
    child_pid: int | None
    created: float
    started: float | None
    finished: float | None
    heartbeat: float | None
    exit_code: int | None
    error: str
    resumed_from: int | None
    dir: Path

    @property
    def log_path(self) -> Path:
        return self.dir / "job.log"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
    return True


class JobManager:
    """The job table and launcher for one data home."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        cfg.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            cfg.jobs_dir / "jobs.sqlite", isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._audit = AuditLog(cfg.audit_path)

    def close(self) -> None:
        self._db.close()

    # -- reading --

    def _job(self, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["args"] = json.loads(data["args"])
        return Job(**data, dir=self.cfg.jobs_dir / str(row["id"]))

    def get(self, job_id: int) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id}")
        return self._job(row)

    def list(self, limit: int = 50) -> list[Job]:
        rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def log_tail(self, job_id: int, lines: int = 40) -> str:
        path = self.get(job_id).log_path
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode(errors="replace")
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    def failure_reason(self, job_id: int) -> str:
        """Why a job failed, in its command's own words: the last `error: ...` line of its log (the one line the CLI
        prints for unusable input, never a traceback), else what the supervisor recorded ("exit code 2")."""
        job = self.get(job_id)
        for line in reversed(self.log_tail(job_id, 200).splitlines()):
            if line.startswith("error: "):
                return line.removeprefix("error: ").strip()
        return job.error

    def import_report(self, job_id: int) -> dict[str, Any] | None:
        """An import job's detail (every rejected row with its reason), from the owner-only rejections file in the
        job's folder; None until the job wrote it. For admins: the job's log holds only counts and row numbers."""
        path = self.get(job_id).dir / REJECTIONS_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def metrics(self, job_id: int) -> list[dict[str, Any]]:
        """The run's metrics, one dict per JSON line (a half-written last line is skipped)."""
        path = self.get(job_id).metrics_path
        out = []
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    # -- starting --

    def start(self, spec: JobSpec, user: str, resumed_from: int | None = None) -> Job:
        """Record, audit and launch a job built by a `*_job` builder (queued at the concurrency limit)."""
        if spec.kind not in KINDS:
            raise JobError(f"unknown job kind {spec.kind!r}; choose one of {', '.join(KINDS)}")
        cur = self._db.execute(
            "INSERT INTO jobs (kind, args, user, status, created, resumed_from) VALUES (?, ?, ?, 'queued', ?, ?)",
            (spec.kind, json.dumps(list(spec.args)), user, time.time(), resumed_from),
        )
        job = self.get(cur.lastrowid)
        job.dir.mkdir(parents=True, exist_ok=True)
        self._audit.append("job_start", user, job=job.id, kind=job.kind, resumed_from=resumed_from)
        self.reap()
        return self.get(job.id)

    def resume(self, job_id: int, user: str) -> Job:
        """A new train job continuing the run of a failed or cancelled one from its last checkpoint."""
        old = self.get(job_id)
        if old.kind != "train":
            raise JobError("only train jobs can be resumed")
        if old.active:
            raise JobError(f"job {job_id} is still {old.status}")
        args = [a for a in old.args if a != "--resume"]
        args = _strip_option(args, "--run-dir") + ["--resume", "--run-dir", str(self._run_dir_of(old))]
        return self.start(JobSpec("train", tuple(args)), user=user, resumed_from=job_id)

    def _run_dir_of(self, job: Job) -> Path:
        if "--run-dir" in job.args:
            return Path(job.args[job.args.index("--run-dir") + 1])
        return job.run_dir

    def _launch(self, job: Job) -> bool:
        """Claim the queued job atomically, then start its supervisor; False when another process claimed it."""
        claimed = self._db.execute(
            "UPDATE jobs SET status = 'launching' WHERE id = ? AND status = 'queued'", (job.id,)
        ).rowcount
        if not claimed:
            return False
        log = job.log_path.open("ab")
        env = {**os.environ, "MMDERM_HOME": str(self.cfg.home), "PYTHONUNBUFFERED": "1", ACTING_USER_ENV: job.user}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmcore", "jobs", "run", str(job.id)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: cancel reaches the worker, an app restart does not
        )
        log.close()
        self._db.execute(
            "UPDATE jobs SET status = 'running', pid = ?, started = ?, heartbeat = ? WHERE id = ?",
            (proc.pid, time.time(), time.time(), job.id),
        )
        return True

    # -- supervising --

    def reap(self) -> list[int]:
        """Mark jobs whose supervisor died as failed, finish cancels past their grace, start queued jobs."""
        marked = []
        now = time.time()
        for job in self.list(limit=1000):
            _wait_child(job.pid)  # supervisors we launched are our children: collect them, no zombies
            if job.status in ("running", "cancelling") and not _alive(job.pid):
                if not self._collect_exit(job):
                    status = "cancelled" if job.status == "cancelling" else "failed"
                    self._finish(job.id, status, error="the job's process died without reporting (killed?)")
                    marked.append(job.id)
            elif job.status == "cancelling" and job.finished and now - job.finished > self.cfg.jobs.cancel_grace_s:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGKILL)
        running = sum(1 for j in self.list(limit=1000) if j.status in ("running", "cancelling"))
        for job in sorted((j for j in self.list(limit=1000) if j.status == "queued"), key=lambda j: j.id):
            if running >= self.cfg.jobs.max_concurrent:
                break
            if self._launch(job):
                running += 1
        return marked

    def _collect_exit(self, job: Job) -> bool:
        """Whether the dead supervisor wrote its own final status before it went."""
        return self.get(job.id).status not in ACTIVE

    def _finish(self, job_id: int, status: str, exit_code: int | None = None, error: str = "") -> None:
        self._db.execute(
            "UPDATE jobs SET status = ?, exit_code = ?, finished = ?, error = ? WHERE id = ?",
            (status, exit_code, time.time(), error, job_id),
        )

    def cancel(self, job_id: int, user: str, wait: bool = False) -> Job:
        """SIGTERM the job's process group (audited); SIGKILL follows after the grace period (here or in `reap`)."""
        job = self.get(job_id)
        if job.status in ("queued", "running"):
            self._audit.append("job_cancel", user, job=job.id, kind=job.kind)
        if job.status == "queued":
            self._finish(job_id, "cancelled", error="cancelled before it started")
            return self.get(job_id)
        if job.status != "running":
            raise JobError(f"job {job_id} is {job.status}, not running")
        self._db.execute("UPDATE jobs SET status = 'cancelling', finished = ? WHERE id = ?", (time.time(), job_id))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGTERM)
        if wait:
            deadline = time.time() + self.cfg.jobs.cancel_grace_s
            while time.time() < deadline and _alive(job.pid):
                _wait_child(job.pid)
                time.sleep(0.1)
            if _alive(job.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGKILL)
            self.reap()
        return self.get(job_id)

    def wait(self, job_id: int, timeout: float = 300) -> Job:
        """Block until the job ends (tests and the CLI); reaps while waiting."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.reap()
            job = self.get(job_id)
            if not job.active:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {self.get(job_id).status} after {timeout:.0f} s")

    # -- the supervisor side (runs in the job's own process group) --

    def supervise(self, job_id: int) -> int:
        """Run the job's command as a child, heartbeat, record its exit; SIGTERM is passed on to the child."""
        job = self.get(job_id)
        cmd = self._command(job)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[job {job.id}] {' '.join(cmd)}", flush=True)
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        self._db.execute("UPDATE jobs SET child_pid = ? WHERE id = ?", (child.pid, job.id))

        cancelled = False

        def on_term(signum: int, frame: object) -> None:
            nonlocal cancelled
            cancelled = True
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        while True:
            try:
                code = child.wait(timeout=self.cfg.jobs.heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                self._db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job.id))
        if cancelled or self.get(job_id).status == "cancelling":
            status = "cancelled"
        else:
            status = "succeeded" if code == 0 else "failed"
        error = "" if code == 0 or cancelled else f"exit code {code}" + (" (killed)" if code < 0 else "")
        self._finish(job.id, status, exit_code=code, error=error)
        print(f"[job {job.id}] {status} (exit code {code})", flush=True)
        return 0 if status == "succeeded" else 1

    def _command(self, job: Job) -> list[str]:
        args = list(job.args)
        if job.kind == "train" and "--run-dir" not in args:
            args += ["--run-dir", str(job.run_dir)]
        if job.kind == "import":  # an app user's import reads only under the import roots; its detail stays here
            args = _strip_option(args, "--rejections") + ["--rejections", str(job.dir / REJECTIONS_FILE)]
            args += [] if "--confine" in args else ["--confine"]
        gpus = _job_config(job.args).jobs.gpus if job.kind == "train" else 0  # the job's own validated config
        if gpus > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={gpus}",
                "-m",
                "mmcore",
                "train",
                *args,
            ]
        return [sys.executable, "-m", "mmcore", job.kind, *args]


def _wait_child(pid: int | None) -> None:
    """Collect `pid` if it is our exited child (a no-op for anyone else's process)."""
    if pid:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _strip_option(args: list[str], option: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        out.append(a)
    return out


# ---- job specs: typed arguments in, a validated command line out (what the Admin page and the CLI start) ----


@dataclass(frozen=True)
class JobSpec:
    """A validated job: its kind and the arguments of `python -m mmcore <kind>`."""

    kind: str
    args: tuple[str, ...]


def _job_config(args: Sequence[str]) -> Config:
    """The config a job's `--config`/`--set` arguments give (already validated when the job was built)."""
    preset, sets = None, []
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--config":
            preset = value
        elif flag == "--set":
            sets.append(value)
    return load_config(preset, sets)


def _config_args(preset: str | None, overrides: Mapping[str, Any] | None) -> tuple[list[str], Config]:
    """`--config P --set k=v ...` for typed overrides, and the config they give; JobError when it is refused."""
    sets = [f"{key}={_toml_value(value)}" for key, value in (overrides or {}).items()]
    try:
        cfg = load_config(preset, sets)
    except ConfigError as e:
        raise JobError(f"bad configuration: {e}") from None
    args = ["--config", preset] if preset else []
    for item in sets:
        args += ["--set", item]
    return args, cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(str(value))


def train_job(preset: str, overrides: Mapping[str, Any] | None = None) -> JobSpec:
    """A training job on a preset with typed overrides, e.g. {"train.epochs": 5, "train.note_strategies": ["P1"]}."""
    from mmcore.image_encoders import IMAGE_ENCODERS
    from mmcore.text_encoders import TEXT_ENCODERS

    args, cfg = _config_args(preset, overrides)
    if not cfg.train.note_strategies:
        raise JobError("choose at least one note strategy: the text tower and the alignment losses train on notes")
    if cfg.model.image_encoder not in IMAGE_ENCODERS:
        raise JobError(f"unknown image encoder {cfg.model.image_encoder!r}; choose one of {IMAGE_ENCODERS.names()}")
    if cfg.model.text_encoder not in TEXT_ENCODERS:
        raise JobError(f"unknown text encoder {cfg.model.text_encoder!r}; choose one of {TEXT_ENCODERS.names()}")
    return JobSpec("train", tuple(args))


def import_job(
    fmt: str, metadata: str, images: str, columns: str = "", source: str = "", dry_run: bool = False
) -> JobSpec:
    """A dataset import job, or with dry_run its preview (reads the CSV, checks the image files, stores nothing).

    Paths are on the server and must lie under the import roots (symlinks followed): refused here, before anything
    runs, and checked again by the job itself when it reads.
    """
    from mmcore.importers import READERS, ImportFailed, confine, import_roots

    if fmt not in READERS:
        raise JobError(f"unknown import format {fmt!r}; choose one of {', '.join(READERS.names())}")
    if not metadata.strip() or not images.strip():
        raise JobError("an import needs both the metadata CSV and the images folder")
    roots = import_roots(load_config())
    try:
        metadata = str(confine(metadata.strip(), roots, "metadata CSV"))
        images = str(confine(images.strip(), roots, "images folder"))
    except ImportFailed as e:
        raise JobError(str(e)) from None
    args = ["--format", fmt, "--metadata", metadata, "--images", images, "--json"]
    if dry_run:
        args.append("--dry-run")
    if source.strip():
        args += ["--source", source.strip()]
    if columns.strip():
        args += ["--columns", columns.strip()]
    return JobSpec("import", tuple(args))


def synth_job(n: int, seed: int = 0, balanced: bool = False) -> JobSpec:
    """A SynthDerm generation job."""
    if not 1 <= n <= 1_000_000:
        raise JobError(f"the number of cases must be between 1 and 1,000,000, got {n}")
    return JobSpec("synth", ("--n", str(int(n)), "--seed", str(int(seed)), *(["--balanced"] if balanced else [])))


def notes_job(strategy: str) -> JobSpec:
    """A note-generation job for one strategy."""
    from mmcore.notes import STRATEGIES, strategy_names

    if strategy not in STRATEGIES:
        raise JobError(f"unknown note strategy {strategy!r}; choose one of {', '.join(strategy_names())}")
    return JobSpec("notes", ("generate", "--strategy", strategy))
