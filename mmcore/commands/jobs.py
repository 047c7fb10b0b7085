"""`jobs list|start|cancel|show|reap|run`: background jobs. `start KIND -- ARGS` checks the arguments against the
command's own parser and its configuration before anything runs; `run` is the supervisor the job manager starts."""

from __future__ import annotations

import argparse
import contextlib
import io

from mmcore.audit import acting_user
from mmcore.commands import CliError, build_parser, emit
from mmcore.config import Config, ConfigError, load_config
from mmcore.jobs import KINDS, JobError, JobManager, JobSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "start", "cancel", "show", "reap", "run"])
    p.add_argument("job", nargs="?", help="job id (cancel, show, run) or kind (start)")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="start: the command's own arguments")


def run(args: argparse.Namespace, cfg: Config) -> int:
    manager = JobManager(cfg)
    try:
        if args.action == "run":  # the supervisor; started by JobManager, not by people
            return manager.supervise(int(args.job))
        if args.action == "start":
            job = manager.start(validated_spec(args.job or "", [a for a in args.job_args if a != "--"]), acting_user())
            emit(args, {"id": job.id, "status": job.status}, f"job {job.id} {job.status}")
        elif args.action == "cancel":
            job = manager.cancel(_job_id(args.job), acting_user(), wait=True)
            emit(args, {"id": job.id, "status": job.status}, f"job {job.id} {job.status}")
        elif args.action == "reap":
            marked = manager.reap()
            emit(args, {"marked_failed": marked}, f"marked failed: {marked or 'none'}")
        elif args.action == "show":
            job = manager.get(_job_id(args.job))
            payload = {
                "id": job.id,
                "kind": job.kind,
                "status": job.status,
                "args": job.args,
                "exit_code": job.exit_code,
                "error": job.error,
            }
            emit(args, payload, manager.log_tail(job.id))
        else:
            manager.reap()
            jobs = manager.list()
            rows = [{"id": j.id, "kind": j.kind, "status": j.status, "args": j.args} for j in jobs]
            text = "\n".join(f"{j.id:>4}  {j.kind:<6} {j.status:<10} {' '.join(j.args)}" for j in jobs) or "no jobs"
            emit(args, {"jobs": rows}, text)
    except JobError as e:
        raise CliError(str(e)) from None
    finally:
        manager.close()
    return 0


def _job_id(value: str | None) -> int:
    if not value or not value.isdigit():
        raise CliError(f"a job id is a number, got {value!r}")
    return int(value)


def validated_spec(kind: str, job_args: list[str]) -> JobSpec:
    """A job from command-line arguments, refused (JobError) unless the command's parser and config accept them."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = build_parser(only=kind).parse_args([kind, *job_args])
    except SystemExit:
        reason = err.getvalue().strip().splitlines()[-1:] or [" ".join(job_args)]
        raise JobError(f"bad {kind} arguments: {reason[0].split(' error: ')[-1]}") from None
    try:
        load_config(ns.config, ns.sets)
    except ConfigError as e:
        raise JobError(f"bad {kind} configuration: {e}") from None
    return JobSpec(kind, tuple(job_args))
