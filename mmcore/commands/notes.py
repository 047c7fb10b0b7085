"""`notes generate|fidelity --strategy S`: (re)write notes for the stored cases, or check the stored ones against
their cases (and optionally drop the contradicting ones)."""

from __future__ import annotations

import argparse
import os

from mmcore.audit import AuditLog, acting_user
from mmcore.cases import CaseStore
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.llm import LLMError, build_backend
from mmcore.notes import STRATEGIES, fidelity_of_notes, generate_notes, strategy_names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["generate", "fidelity"])
    p.add_argument("--strategy", required=True, help=", ".join(strategy_names()))
    p.add_argument("--backend", choices=["template", "llm"], default="template")
    p.add_argument("--llm-path", help="local transformers causal-LM directory")
    p.add_argument("--llm-url", help="OpenAI-compatible chat endpoint (key from MMDERM_LLM_API_KEY)")
    p.add_argument("--llm-model", default="", help="model name sent to the endpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-contradictions", action="store_true", help="delete notes that contradict their case")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.strategy not in STRATEGIES:
        raise CliError(f"unknown note strategy {args.strategy!r}; choose one of: {', '.join(strategy_names())}")
    audit = AuditLog(cfg.audit_path)
    with CaseStore(cfg.home) as store:
        if args.action == "fidelity":
            payload = fidelity_of_notes(store, args.strategy, args.drop_contradictions, acting_user(), audit)
            text = (
                f"{args.strategy}: {payload['with_contradictions']} of {payload['notes']} notes contradict "
                f"their case ({payload['rate']:.1%})"
            )
            emit(args, payload, text + (f"; {payload['dropped']} deleted" if "dropped" in payload else ""))
            return 0
        backend = None
        try:
            if args.backend == "llm":
                backend = build_backend(
                    args.llm_path, args.llm_url, args.llm_model, api_key=os.environ.get("MMDERM_LLM_API_KEY") or None
                )
            log = cfg.home / "notes" / f"fidelity_{args.strategy}_{args.backend}.jsonl"
            payload = generate_notes(store, args.strategy, args.seed, backend, args.drop_contradictions, log)
        except LLMError as e:
            raise CliError(str(e)) from None
    audit.append(
        "notes_generate", acting_user(), strategy=args.strategy, backend=args.backend, written=payload["written"]
    )
    emit(
        args,
        payload,
        f"{payload['written']} {args.strategy} notes written ({payload['backend']}); "
        f"{payload['with_contradictions']} contradict their case ({payload['rate']:.1%}); log {payload['log']}",
    )
    return 0
