"""`train [--resume] [--run-dir DIR] [--promote] [--json]`: train, register the version (calibrated, with its
out-of-distribution gate and test evaluation), and with --promote make it active. Exit 0 finished, 143 stopped by
SIGTERM (resumable). Under `torchrun --nproc_per_node N -m mmcore train ...` every rank runs this; train.batch_size
is the global batch, split evenly over the ranks."""

from __future__ import annotations

import argparse
import time

import torch.distributed as dist

from mmcore.commands import CliError, emit
from mmcore.config import Config, resolve_path
from mmcore.model_store import ModelStoreError
from mmcore.train import EXIT_STOPPED, TrainError, run_training


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --run-dir")
    p.add_argument("--run-dir", help="where checkpoints and metrics go (default: MMDERM_HOME/runs/<time>)")
    p.add_argument("--promote", action="store_true", help="make the new version active (embeds and indexes cases)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.resume and not args.run_dir:
        raise CliError("--resume needs --run-dir: the run directory holding checkpoint.pt")
    run_dir = (
        resolve_path(args.run_dir, base=cfg.home)
        if args.run_dir
        else cfg.home / "runs" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    )
    try:
        result = run_training(cfg, run_dir, resume=args.resume, promote=args.promote, sets=args.sets)
    except (TrainError, ModelStoreError) as e:
        raise CliError(str(e)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.stopped:
        return EXIT_STOPPED
    if result.version is None:  # a non-zero rank: rank 0 reports
        return 0
    metrics = ", ".join(f"val {k} {v:.3f}" for k, v in result.metrics.items() if isinstance(v, float))
    emit(
        args,
        {"version": result.version, "run_dir": str(result.run_dir), "metrics": result.metrics},
        f"{result.version} ({result.run_dir}): {metrics}",
    )
    return 0
