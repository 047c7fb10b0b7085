"""Background jobs: validation before start, progress, cancel, kill -9 + reap + resume, an app restart mid-job."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from mmcore.audit import AuditLog
from mmcore.checkpoints import CHECKPOINT_FILE, load_checkpoint
from mmcore.commands.jobs import validated_spec
from mmcore.config import load_config
from mmcore.jobs import JobError, JobManager, JobSpec, notes_job, synth_job, train_job
from mmcore.model_store import list_versions


def _train(epochs: int) -> JobSpec:
    return train_job("tiny", {"train.batch_size": 8, "train.epochs": epochs})


def _manager(home) -> JobManager:
    return JobManager(load_config("tiny", env={"MMDERM_HOME": str(home)}))


def _epochs(manager: JobManager, job_id: int) -> list[int]:
    return [m["epoch"] for m in manager.metrics(job_id) if "epoch" in m]


def _checkpointed(job) -> int:
    """The epoch of the run's last checkpoint (0 before the first)."""
    path = job.run_dir / CHECKPOINT_FILE
    return load_checkpoint(path)["state"]["epoch"] if path.is_file() else 0


def _wait_for(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def test_bad_job_configuration_is_refused_and_starts_nothing(synth_home):
    manager = _manager(synth_home)
    bad = [
        (lambda: train_job("tiny", {"train.epochs": 0}), "train.epochs must be between 1"),
        (lambda: train_job("tiny", {"train.lr": -1.0}), "train.lr must be between"),
        (lambda: train_job("tiny", {"model.image_encoder": "resnet9000"}), "unknown image encoder 'resnet9000'"),
        (lambda: train_job("tiny", {"train.epoch": 3}), "unknown key train.epoch"),
        (lambda: train_job("nonexistent"), "no preset or file named 'nonexistent'"),
        (lambda: synth_job(0), "between 1 and 1,000,000"),
        (lambda: notes_job("P9"), "unknown note strategy 'P9'"),
        (lambda: validated_spec("train", ["--config", "tiny", "--bogus"]), "unrecognized arguments: --bogus"),
        (lambda: validated_spec("train", ["--set", "train.batch_size=1"]), "train.batch_size must be between 2"),
        (lambda: validated_spec("rm -rf /", []), "unknown job kind"),
    ]
    for build, message in bad:
        with pytest.raises(JobError, match=message):
            manager.start(build(), "admin")
    with pytest.raises(JobError, match="unknown job kind"):
        manager.start(JobSpec("rm", ("-rf", "/")), "admin")
    assert manager.list() == []
    assert not any(p.is_dir() for p in manager.cfg.jobs_dir.iterdir())


def test_typed_overrides_become_the_commands_arguments():
    spec = train_job("tiny", {"train.note_strategies": ["P1", "clinical"], "train.augment": False, "train.lr": 0.01})
    assert spec == JobSpec("train", ("--config", "tiny", "--set", 'train.note_strategies=["P1", "clinical"]',
                                     "--set", "train.augment=false", "--set", "train.lr=0.01"))  # fmt: skip
    assert validated_spec("train", list(spec.args)) == spec  # what the page builds, the CLI accepts


def test_a_queued_job_is_claimed_by_one_supervisor_only(synth_home):
    """Two app replicas reaping at once: before the atomic claim both launched the same job (20 of 20 trials)."""
    managers = [_manager(synth_home) for _ in range(2)]
    for _ in range(3):  # the race, unfixed, launched twice every time: three trials show it as well as twenty
        row = managers[0]._db.execute(  # a queued job nobody has reaped yet
            "INSERT INTO jobs (kind, args, user, status, created) VALUES ('eval', '[]', 'admin', 'queued', ?)",
            (time.time(),),
        )
        job = managers[0].get(row.lastrowid)
        job.dir.mkdir(parents=True)
        barrier, launched = threading.Barrier(2), []

        def launch(manager: JobManager, job_id: int = job.id, barrier=barrier, launched=launched) -> None:
            barrier.wait()
            launched.append(manager._launch(manager.get(job_id)))

        threads = [threading.Thread(target=launch, args=(m,)) for m in managers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(launched) == [False, True]
        assert managers[0].wait(job.id, timeout=120).status == "failed"  # no model to evaluate: it ran, once
        assert managers[0].log_tail(job.id, 200).count("[job ") == 2  # one supervisor's start and end lines


def test_tiny_train_job_shows_progress_and_cancels(synth_home):
    manager = _manager(synth_home)
    job = manager.start(_train(200), "admin")
    assert job.status == "running" and job.pid
    _wait_for(lambda: len(_epochs(manager, job.id)) >= 1, what="the first epoch's metrics")
    assert {"epoch", "train_loss"} <= set(manager.metrics(job.id)[0])
    job = manager.cancel(job.id, "admin", wait=True)
    assert job.status == "cancelled"
    events = [(e["event"], e["user"], e["job"]) for e in AuditLog(manager.cfg.audit_path).read() if "job" in e]
    assert events == [("job_start", "admin", job.id), ("job_cancel", "admin", job.id)]
    with pytest.raises(ProcessLookupError):
        os.killpg(job.pid, 0)  # the whole process group is gone
    checkpoint = load_checkpoint(job.run_dir / CHECKPOINT_FILE)  # saved cleanly on SIGTERM
    assert checkpoint["state"]["epoch"] >= 1
    assert "stopped by SIGTERM" in manager.log_tail(job.id, 200)


def test_kill_9_reaped_then_resumed_to_the_end_without_corruption(synth_home):
    manager = _manager(synth_home)
    epochs = 8
    job = manager.start(_train(epochs), "admin")
    first = job
    kills = 0
    saved = 0
    while kills < 3:
        _wait_for(
            lambda j=job, s=saved: _checkpointed(first) > s or not manager.get(j.id).active, what="a new checkpoint"
        )
        saved = _checkpointed(first)
        current = manager.get(job.id)
        if not current.active:
            break  # finished before we could kill it again: the test below still checks the end state
        _wait_for(lambda j=job: manager.get(j.id).child_pid is not None, what="the worker's pid")
        os.kill(manager.get(job.id).child_pid, signal.SIGKILL)
        kills += 1
        _wait_for(lambda j=job: manager.reap() is not None and not manager.get(j.id).active, what="the reaper")
        dead = manager.get(job.id)
        assert dead.status == "failed" and "killed" in dead.error
        checkpoint = load_checkpoint(first.run_dir / CHECKPOINT_FILE)  # never a half-written file
        assert 1 <= checkpoint["state"]["epoch"] <= epochs
        job = manager.resume(job.id, "admin")
        assert job.resumed_from == dead.id
    assert kills == 3
    final = manager.wait(job.id, timeout=300)
    assert final.status == "succeeded", manager.log_tail(final.id, 60)
    checkpoint = load_checkpoint(first.run_dir / CHECKPOINT_FILE)
    assert checkpoint["state"]["epoch"] == epochs
    logged = [json.loads(line)["epoch"] for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, epochs + 1))  # every epoch once, none lost or repeated across the kills
    assert len(list_versions(manager.cfg)) == 1
    trained = AuditLog(manager.cfg.audit_path).read(event="train")
    assert [e["user"] for e in trained] == ["admin"]  # the job's user, not the server's OS account
    assert not list(first.run_dir.glob("*.tmp")) and not list(first.run_dir.glob(".*.tmp"))


def test_app_restart_in_the_middle_of_a_job(synth_home):
    app = _manager(synth_home)
    job = app.start(_train(6), "admin")
    _wait_for(lambda: len(_epochs(app, job.id)) >= 1, what="the first epoch")
    app.close()  # the app goes away; the job runs on in its own session

    restarted = _manager(synth_home)
    again = restarted.get(job.id)
    assert again.status == "running" and again.pid == job.pid  # re-attached from the table
    done = restarted.wait(job.id, timeout=300)
    assert done.status == "succeeded"
    assert _epochs(restarted, job.id)[-1] == 6


def test_reaper_marks_a_job_whose_supervisor_died(synth_home):
    manager = _manager(synth_home)
    job = manager.start(_train(200), "admin")
    _wait_for(lambda: manager.get(job.id).child_pid is not None, what="the worker")
    os.killpg(job.pid, signal.SIGKILL)  # supervisor and worker die together, nothing reports
    _wait_for(lambda: not manager.get(job.id).active or manager.reap() == [job.id], what="the reaper")
    dead = manager.get(job.id)
    assert dead.status == "failed" and "died" in dead.error


def test_concurrency_limit_queues_jobs(synth_home):
    manager = _manager(synth_home)
    first = manager.start(_train(200), "admin")
    second = manager.start(JobSpec("synth", ("--n", "4", "--size", "32", "--seed", "5")), "admin")
    assert first.status == "running" and second.status == "queued"
    manager.cancel(first.id, "admin", wait=True)
    assert manager.wait(second.id, timeout=120).status == "succeeded"


# ---- issue 13: imports as jobs (items 1, 8, 12) and the GPUs of a train job (item 13) ----


def _folder_dataset(root):
    """Under an import root: two photos and a CSV whose third row names a file that is not there, named as clinics
    name files (a patient's name and record number: PHI that must not reach the job's log)."""
    from PIL import Image

    photos = root / "clinic" / "photos"
    photos.mkdir(parents=True)
    for i, colour in enumerate([(150, 90, 60), (90, 60, 150)]):
        Image.new("RGB", (24, 16), colour).save(photos / f"p{i}.jpg")
    (root / "clinic" / "labels.csv").write_text("file,diagnosis\np0.jpg,nv\np1.jpg,mel\nDoe_Jane_MRN12345.jpg,nv\n")
    return root / "clinic" / "labels.csv", photos


def test_import_jobs_read_only_under_the_import_roots(home, monkeypatch, tmp_path):
    """Before: the admin preview read any server file (/etc/passwd, a secrets.toml) in the app's own process."""
    from mmcore.jobs import import_job

    root = tmp_path / "imports"
    monkeypatch.setenv("MMDERM_IMPORT_ROOTS", str(root))
    labels, photos = _folder_dataset(root)
    for metadata, images in (("/etc/passwd", str(photos)), (str(labels), "/etc"), (str(labels), str(tmp_path))):
        with pytest.raises(JobError, match="not under an import root"):
            import_job("folder", metadata, images, columns="image=file,dx=diagnosis")
    spec = import_job("folder", "clinic/labels.csv", "clinic/photos", columns="image=file,dx=diagnosis", dry_run=True)
    assert spec.kind == "import" and "--dry-run" in spec.args and str(labels.resolve()) in spec.args
    manager = JobManager(load_config("tiny"))
    job = manager.start(spec, "admin")
    command = manager._command(job)
    assert "--confine" in command and command[command.index("--rejections") + 1] == str(job.dir / "rejections.json")
    manager.wait(job.id, timeout=120)


def test_an_import_job_logs_counts_and_rows_and_keeps_the_reasons_for_admins(home, monkeypatch, tmp_path):
    """Before: the job's log (the Admin log tail) said `Doe_Jane_MRN12345.jpg not found`."""
    from mmcore.jobs import import_job

    root = tmp_path / "imports"
    monkeypatch.setenv("MMDERM_IMPORT_ROOTS", str(root))
    labels, photos = _folder_dataset(root)
    manager = JobManager(load_config("tiny"))
    for dry_run in (False, True):
        options = {"dry_run": True} if dry_run else {}
        spec = import_job("folder", str(labels), str(photos), columns="image=file,dx=diagnosis", **options)
        job = manager.wait(manager.start(spec, "dr_admin").id, timeout=120)
        assert job.status == "succeeded", manager.log_tail(job.id)
        log = manager.log_tail(job.id, 200)
        assert "Doe_Jane" not in log and "MRN12345" not in log
        payload = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
        assert payload["rejected"] == [{"file": "labels.csv", "row": 4}]
        detail = job.dir / "rejections.json"
        assert detail.stat().st_mode & 0o777 == 0o600
        report = manager.import_report(job.id)
        assert [(r["row"], r["reason"]) for r in report["rejected"]] == [(4, "file: image file not found")]
        assert report.get("imported", 2) == 2 and report.get("candidates", 2) == 2
    entries = AuditLog(manager.cfg.audit_path).read()
    imports = [(e["event"], e["user"]) for e in entries if e["event"].startswith("import")]
    assert imports == [("import", "dr_admin"), ("import_preview", "dr_admin")]  # the job's user, not the OS account


def test_a_train_jobs_gpus_come_from_its_validated_config(home):
    manager = JobManager(load_config("tiny"))
    row = manager._db.execute(
        "INSERT INTO jobs (kind, args, user, status, created) VALUES ('train', ?, 'admin', 'failed', ?)",
        (json.dumps(list(train_job("tiny", {"jobs.gpus": 2}).args)), time.time()),
    )
    command = manager._command(manager.get(row.lastrowid))
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    single = train_job("tiny", {"jobs.gpus": 1})
    row = manager._db.execute(
        "INSERT INTO jobs (kind, args, user, status, created) VALUES ('train', ?, 'admin', 'failed', ?)",
        (json.dumps(list(single.args)), time.time()),
    )
    assert manager._command(manager.get(row.lastrowid))[1:4] == ["-m", "mmcore", "train"]
