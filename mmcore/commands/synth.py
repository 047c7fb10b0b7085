"""`synth --n N [--seed S]`: SynthDerm cases with masks and a note of every strategy into the case store."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from mmcore.audit import AuditLog, acting_user
from mmcore.cases import CaseStore
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.synthderm import DOMAINS, generate_into


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--balanced", action="store_true", help="equal class prevalence instead of HAM10000-like")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")


def run(args: argparse.Namespace, cfg: Config) -> int:
    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    with CaseStore(cfg.home) as store, tqdm(total=args.n, desc="synth", unit="case", file=sys.stderr) as bar:
        try:
            result = generate_into(
                store,
                args.n,
                args.seed,
                domains,
                args.size,
                args.balanced,
                cfg.data.split_fractions,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        except ValueError as e:
            raise CliError(str(e)) from None
    AuditLog(cfg.audit_path).append("synth", acting_user(), n=args.n, seed=args.seed, stored=result.stored)
    payload = {
        "generated": result.generated,
        "stored": result.stored,
        "by_dx": result.by_dx,
        "by_domain": result.by_domain,
        "seconds": result.seconds,
    }
    text = (
        f"{args.n} SynthDerm cases (seed {args.seed}) -> {result.stored} stored in {cfg.home} "
        f"in {result.seconds:.1f} s\n"
        f"  by dx: {', '.join(f'{k} {v}' for k, v in result.by_dx.items())}\n"
        f"  by domain: {', '.join(f'{k} {v}' for k, v in result.by_domain.items())}\n"
        f"  source splits: {', '.join(f'{k} {v}' for k, v in result.splits.items())}"
    )
    emit(args, payload, text)
    return 0
