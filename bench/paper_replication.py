"""Seed paper 000's experiment on SynthDerm: train on dermoscopy only, test on all three domains.

Image-only training (CE on the image branch alone) against multimodal training (all losses) with notes of strategy
M, P1, P2, P3 and their mix; the image branch alone is compared at test time, the text side with each run's own
notes. Frozen-backbone mode with the default encoders (EfficientNet-Lite0 + MiniLM) so that it fits on 2 CPU
cores: features are cached once, only the heads train (the paper fine-tunes DenseNet121 + PubMedBERT).

    python bench/paper_replication.py [--home DIR] [--n 2400] [--seeds 0 1 2] [--epochs 30]

Writes bench/results/paper_replication.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmcore.cases import CaseStore
from mmcore.config import REPO_ROOT, Config, load_config
from mmcore.evaluate import balanced_accuracy, case_outputs, retrieval_metrics
from mmcore.model_store import load_version
from mmcore.train import run_training

RESULTS = REPO_ROOT / "bench" / "results"
DOMAINS = ("dermoscopy", "clinical", "atlas")
STRATEGIES = ("M", "P1", "P2", "P3")
# name -> (training note strategies, image-only?)
ARMS = {
    "image-only (CE image)": (("P1",), True),  # BASE_ARM
    "multimodal M": (("M",), False),
    "multimodal P1": (("P1",), False),
    "multimodal P2": (("P2",), False),
    "multimodal P3": (("P3",), False),
    "multimodal mix": (STRATEGIES, False),
}
IMAGE_ONLY_LOSS = {"loss.ce_text": "0", "loss.cosine": "0", "loss.l1": "0", "loss.ntxent": "0"}


def ensure_data(cfg: Config, n: int) -> dict[str, int]:
    from mmcore.synthderm import generate_into

    with CaseStore(cfg.home) as store:
        if store.count() == 0:
            generate_into(store, n, seed=0, domains=DOMAINS, size=224)
        return {
            f"{split}/{domain}": store.count(split=split, domain=domain)
            for split in ("train", "val", "test")
            for domain in DOMAINS
        }


def score(cfg: Config, version: str, strategies: tuple[str, ...]) -> dict[str, float]:
    """Image-branch balanced accuracy per test domain; fused and text with the run's own notes; retrieval."""
    loaded = load_version(cfg, version, device="cpu")
    note = strategies[0] if len(strategies) == 1 else "P1"  # the mix is scored with P1 notes
    with CaseStore(cfg.home) as store:
        cases = store.cases(split="test", with_notes=True)
        out = case_outputs(loaded.model, store, cases, note, torch.device("cpu"), cache_dir=cfg.cache_dir)
    domains = np.array([c.domain for c in cases])
    row: dict[str, float] = {}
    for d in DOMAINS:
        m = domains == d
        row[f"image {d}"] = balanced_accuracy(out.labels[m], out.image_logits[m].argmax(1))
    row["image all"] = balanced_accuracy(out.labels, out.image_logits.argmax(1))
    row["text all"] = balanced_accuracy(out.labels, out.text_logits.argmax(1))
    row["fused all"] = balanced_accuracy(out.labels, out.fused_logits.argmax(1))
    shift = domains != "dermoscopy"
    row["fused shifted"] = balanced_accuracy(out.labels[shift], out.fused_logits[shift].argmax(1))
    idx = np.arange(len(cases))
    t2i = retrieval_metrics(out.text_embeds, out.labels, out.image_embeds, out.labels, idx, same_modality=False)
    i2t = retrieval_metrics(out.image_embeds, out.labels, out.text_embeds, out.labels, idx, same_modality=False)
    row["text->image mAP"] = t2i["mAP"]
    row["image->text R@10"] = i2t["R@10"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/mmderm-bench-replication", help="data home (reused: cache, data)")
    parser.add_argument("--n", type=int, default=2400, help="SynthDerm cases over the three domains")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    base = dataclasses.replace(load_config("demo", env={}), home=Path(args.home))
    base = base.replace(**{"train.train_domains": '["dermoscopy"]', "train.epochs": str(args.epochs)})
    counts = ensure_data(base, args.n)
    print(f"data: {counts}", file=sys.stderr)
    runs = []
    for seed in args.seeds:
        for arm, (strategies, image_only) in ARMS.items():
            sets = {"train.seed": str(seed), "train.note_strategies": json.dumps(list(strategies))}
            cfg = base.replace(**sets, **(IMAGE_ONLY_LOSS if image_only else {}))
            t0 = time.perf_counter()
            run_dir = cfg.home / "runs" / f"{arm.replace(' ', '_').replace('(', '').replace(')', '')}-s{seed}"
            if (run_dir / "summary.json").is_file():  # done in an earlier, interrupted bench run
                version = json.loads((run_dir / "summary.json").read_text())["version"]
            else:
                version = run_training(cfg, run_dir).version
            row = score(cfg, version, strategies)
            runs.append(
                {"arm": arm, "seed": seed, "version": version, **row, "seconds": round(time.perf_counter() - t0, 1)}
            )
            print(f"{arm} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr)
    total = time.perf_counter() - started
    write_results(runs, counts, args, total)
    return 0


BASE_ARM = "image-only (CE image)"
TEXT_SIDE = ("text all", "fused all", "fused shifted", "text->image mAP", "image->text R@10")  # n/a for BASE_ARM


def reading(summary: dict[str, dict[str, dict[str, float]]], n_test: int) -> list[str]:
    """What the table says about the paper's claims, computed from it (so it cannot drift from the numbers)."""
    shifted = ("image clinical", "image atlas")

    def shift(arm: str) -> float:
        return statistics.fmean(summary[arm][c]["mean"] for c in shifted)

    def mean(arm: str, col: str) -> float:
        return summary[arm][col]["mean"]

    def short(arm: str) -> str:
        return arm.removeprefix("multimodal ")

    arms = [a for a in summary if a.startswith("multimodal")]
    noise = max(summary[a][c]["sd"] for a in summary for c in shifted)
    gains = {a: shift(a) - shift(BASE_ARM) for a in arms}
    best = max(gains, key=gains.get)
    best_retrieval = max(arms, key=lambda a: mean(a, "text->image mAP"))
    return [
        "Reading (computed from the table):",
        "",
        f"- Image branch under domain shift (mean of clinical and atlas): image-only {shift(BASE_ARM):.3f}; "
        + ", ".join(f"{short(a)} {shift(a):.3f}" for a in arms)
        + f". The largest gain over image-only is {gains[best]:+.3f} ({short(best)}), "
        + ("within" if abs(gains[best]) <= noise else "beyond")
        + f" the seed sd of those columns (up to {noise:.3f}).",
        f"- In domain (dermoscopy), image branch: image-only {mean(BASE_ARM, 'image dermoscopy'):.3f}; "
        + ", ".join(f"{short(a)} {mean(a, 'image dermoscopy'):.3f}" for a in arms)
        + ".",
        "- With the note at test time: the text branch alone scores "
        + ", ".join(f"{short(a)} {mean(a, 'text all'):.3f}" for a in arms)
        + ". M, P1 and P2 notes name the diagnosis, so this is the label read back, not a skill; P3 guesses (a wrong "
        "class in 30% of notes). Fused under shift: "
        + ", ".join(f"{short(a)} {mean(a, 'fused shifted'):.3f}" for a in arms)
        + ".",
        f"- Cross-modal retrieval (text->image mAP) is best with {short(best_retrieval)} "
        f"({mean(best_retrieval, 'text->image mAP'):.3f}); paired image->text R@10 stays low for every arm "
        f"(at most {max(mean(a, 'image->text R@10') for a in arms):.3f} among {n_test} test notes).",
        "- Frozen backbones: the alignment losses can reshape only the heads, never the image features, which is "
        "the path by which the paper's multimodal training helps the image encoder; a GPU run with "
        "`train.finetune=full` (or partial) is the faithful test.",
    ]


def write_results(runs: list[dict], counts: dict[str, int], args: argparse.Namespace, seconds: float) -> None:
    columns = [
        "image dermoscopy",
        "image clinical",
        "image atlas",
        "image all",
        "text all",
        "fused all",
        "fused shifted",
        "text->image mAP",
        "image->text R@10",
    ]
    lines = [
        "# Paper 000 on SynthDerm: dermoscopy-only training, test on three domains",
        "",
        f"Command: `python bench/paper_replication.py --home {args.home} --n {args.n} --seeds "
        f"{' '.join(map(str, args.seeds))} --epochs {args.epochs}` ({seconds / 60:.1f} min for this invocation on 2 "
        "shared CPU cores; runs already in --home are reused, not trained again).",
        "",
        "Setup: SynthDerm (seed 0, HAM10000-like class mix) split by lesion; training and validation on the "
        "`dermoscopy` domain only; test on the test split of all three domains. **Frozen-backbone mode** with the "
        "default encoders (EfficientNet-Lite0 ImageNet + all-MiniLM-L6-v2): features cached once, only the heads "
        "train (the paper fine-tunes DenseNet121 + PubMedBERT end to end; this is what fits on 2 CPU cores). Demo "
        "preset otherwise (Adam lr 1e-3, batch 64, class-balanced sampling, model selection on validation balanced "
        f"accuracy), {args.epochs} epochs, seeds {', '.join(map(str, args.seeds))}.",
        "",
        f"Cases per split/domain: {', '.join(f'{k} {v}' for k, v in counts.items())}.",
        "",
        "Image-only = CE on the image branch alone (every other loss weight 0). Multimodal = CE image + CE text + "
        "cosine + L1 + 0.5 x label-aware NT-Xent. All columns are balanced accuracy (mean recall over the classes "
        "present) unless named otherwise; `image *` is the image branch alone, `text`/`fused` use each arm's own "
        "note strategy (the mix and the image-only arm: P1), `fused shifted` = clinical + atlas. Retrieval over "
        "the whole test split: text->image mAP (hit = same class), image->text R@10 (hit = the case's own note). "
        "Mean ± sd over seeds.",
        "",
        "| arm | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    summary = {}
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm]
        cells, summary[arm] = [], {}
        for col in columns:
            values = [r[col] for r in rows]
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[arm][col] = {"mean": mean, "sd": sd}
            untrained = arm == BASE_ARM and col in TEXT_SIDE  # its text branch never learned: no number to read
            cells.append("n/a" if untrained else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    n_test = sum(v for k, v in counts.items() if k.startswith("test/"))
    lines += ["", *reading(summary, n_test), ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "paper_replication.md").write_text("\n".join(lines))
    payload = {"runs": runs, "summary": summary, "counts": counts, "seconds": round(seconds, 1), "args": vars(args)}
    (RESULTS / "paper_replication.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
