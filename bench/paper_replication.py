"""Seed paper 000's experiment on SynthDerm: train on dermoscopy only, test on all three domains.

Image-only training (CE on the image branch alone) against multimodal training (all losses); the image branch alone
is compared at test time, the text side with each run's own notes. Two kinds of arms, with the default encoders
(EfficientNet-Lite0 + MiniLM) so that they fit on 2 CPU cores:

- heads (`--finetune heads`): frozen backbones, features cached once, only the heads train; notes M, P1, P2, P3, mix;
- partial (`--finetune partial`): the image tower's last two blocks and head and the text tower's top layer train
  with the heads, on cached trunk activations, following the authors' recipe where our software allows (see RECIPE).
  A paired permutation test over seeds and cases compares the image branch under shift, multimodal vs image-only.

    python bench/paper_replication.py --finetune partial [--home DIR] [--n 2400] [--seeds 0 1 2]

Each invocation writes its arms into bench/results/paper_replication.json (other arms already there are kept) and
renders bench/results/paper_replication.md from all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

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
# The fine-tuned arms: the claim is about the image branch, so one multimodal arm, with the P1 reports (grounded in
# the findings drawn in each image: what an image encoder can align with).
PARTIAL_ARMS = {
    "image-only (CE image)": (("P1",), True),
    "multimodal P1": (("P1",), False),
}
# The authors' recipe (public code of paper 000) where our software can follow it on CPU.
RECIPE = {
    "train.finetune": "partial",
    "train.trainable_blocks": "2",  # Lite0 blocks 14-15 + conv_head (the authors fine-tune all of DenseNet121)
    "train.lr": "1e-4",
    "train.weight_decay": "1e-5",
    "train.batch_size": "32",  # drop_last: every epoch is whole batches
    "train.balanced_sampling": "true",  # inverse-frequency weighted sampling
    "train.epochs": "10",
    "train.augment": "true",
    "train.augment_views": "2",
    "loss.ntxent": "0.5",
    "loss.temperature": "0.5",  # the authors' supervised NT-Xent temperature (our default 0.07)
    "train.trainable_text_layers": "1",  # the authors train their text tower's top layer
    "train.amsgrad": "true",  # Adam with amsgrad, as the authors' code
}


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


def tower_outputs(cfg: Config, loaded: Any, cases: list, note: str, text_layers: int) -> dict[str, np.ndarray]:
    """Logits and embeddings of the test cases. Partial versions: image features from the cached clean-view trunk
    activations through the version's trained top (exactly the tower's forward: tests/mmcore/test_image_encoders.py),
    text features likewise when text layers trained; heads versions: the feature cache."""
    from mmcore.activation_cache import (
        ACTIVATIONS,
        ActivationCache,
        image_activations,
        image_trunk_key,
        text_activations,
        text_trunk_key,
    )
    from mmcore.datasets import pad_states

    model, device = loaded.model, torch.device("cpu")
    training = loaded.card.training
    with CaseStore(cfg.home) as store:
        if training.finetune != "partial":
            out = case_outputs(model, store, cases, note, device, cache_dir=cfg.cache_dir)
            return {k: getattr(out, k) for k in ("image_logits", "text_logits", "fused_logits", "image_embeds",
                                                  "text_embeds")}  # fmt: skip
        blocks = training.trainable_blocks
        root = cfg.cache_dir / ACTIVATIONS
        image_trunk, image_top = model.image_encoder.split_trunk(blocks)
        acts, _ = image_activations(
            model,
            image_trunk,
            store,
            cases,
            1,
            ActivationCache(root, image_trunk_key(model, image_trunk, blocks)),
            device,
        )
        texts = [c.notes[note] for c in cases]
        with torch.inference_mode():
            image_feats = image_top.eval()(acts[:, 0])  # (N, F_img)
            if text_layers:
                text_trunk, text_top = model.text_encoder.split_trunk(text_layers)
                key = text_trunk_key(model, text_trunk, text_layers)
                states, _ = text_activations(model, text_trunk, texts, ActivationCache(root, key), device)
                text_feats = torch.cat(
                    [text_top.eval()(*pad_states(states[i : i + 64])) for i in range(0, len(states), 64)]
                )
            else:
                from mmcore.datasets import FeatureCache, text_features, text_tower_key

                text_feats = text_features(
                    model, texts, device, cache=FeatureCache(cfg.cache_dir / "features", text_tower_key(model))
                )
            out = model.forward_features(image_feats, text_feats)
    return {k: getattr(out, k).float().numpy() for k in ("image_logits", "text_logits", "fused_logits", "image_embeds",
                                                           "text_embeds")}  # fmt: skip


def score(
    cfg: Config, version: str, strategies: tuple[str, ...], text_layers: int = 0
) -> tuple[dict[str, float], dict[str, list]]:
    """Image-branch balanced accuracy per test domain; fused and text with the run's own notes; retrieval. And the
    image branch's per-case predictions (for the paired test)."""
    loaded = load_version(cfg, version, device="cpu")
    note = strategies[0] if len(strategies) == 1 else "P1"  # the mix is scored with P1 notes
    with CaseStore(cfg.home) as store:
        cases = store.cases(split="test", with_notes=True)
    out = tower_outputs(cfg, loaded, cases, note, text_layers)
    index = {c: i for i, c in enumerate(loaded.model.classes)}
    labels = np.array([index.get(c.dx, -1) for c in cases])
    domains = np.array([c.domain for c in cases])
    row: dict[str, float] = {}
    for d in DOMAINS:
        m = domains == d
        row[f"image {d}"] = balanced_accuracy(labels[m], out["image_logits"][m].argmax(1))
    row["image all"] = balanced_accuracy(labels, out["image_logits"].argmax(1))
    row["text all"] = balanced_accuracy(labels, out["text_logits"].argmax(1))
    row["fused all"] = balanced_accuracy(labels, out["fused_logits"].argmax(1))
    shift = domains != "dermoscopy"
    row["fused shifted"] = balanced_accuracy(labels[shift], out["fused_logits"][shift].argmax(1))
    idx = np.arange(len(cases))
    t2i = retrieval_metrics(out["text_embeds"], labels, out["image_embeds"], labels, idx, same_modality=False)
    i2t = retrieval_metrics(out["image_embeds"], labels, out["text_embeds"], labels, idx, same_modality=False)
    row["text->image mAP"] = t2i["mAP"]
    row["image->text R@10"] = i2t["R@10"]
    cases_out = {
        "case_id": [c.case_id for c in cases],
        "label": labels.tolist(),
        "domain": domains.tolist(),
        "image_pred": out["image_logits"].argmax(1).tolist(),
    }
    return row, cases_out


def balanced_accuracies(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(P,) balanced accuracy of each row of (P, n) predictions: mean recall over the classes present in `labels`
    (as evaluate.balanced_accuracy, vectorised for the permutation test)."""
    correct = preds == labels[None]  # (P, n)
    return np.mean([correct[:, labels == k].mean(1) for k in np.unique(labels)], axis=0)


def paired_test(runs: list[dict], arm: str, base: str, permutations: int = 10_000) -> dict[str, Any]:
    """Image branch under shift (clinical + atlas test cases), `arm` against `base`, paired over seeds and cases.

    Statistic: the mean over seeds of the difference in the table's "image shifted" (the mean of the clinical and
    atlas balanced accuracies). Null: within each (seed, case) the two arms'
    predictions are exchangeable, so each pair is swapped with probability 1/2 (a paired permutation test, two-sided).
    Also McNemar's exact test on plain correctness, discordant pairs pooled over seeds.
    """
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    observed, null, b, c = [], np.zeros(permutations), 0, 0
    seeds = sorted({r["seed"] for r in runs if r["arm"] == arm})
    for seed in seeds:
        a = next(r for r in runs if r["arm"] == arm and r["seed"] == seed)["cases"]
        o = next(r for r in runs if r["arm"] == base and r["seed"] == seed)["cases"]
        assert a["case_id"] == o["case_id"]
        domains, labels = np.array(a["domain"]), np.array(a["label"])
        pred_a, pred_o = np.array(a["image_pred"]), np.array(o["image_pred"])
        diff, diffs = 0.0, np.zeros(permutations)
        for d in SHIFTED_DOMAINS:  # the table's "image shifted": the mean of the two domains' balanced accuracies
            m = domains == d
            y, pa, po = labels[m], pred_a[m], pred_o[m]
            diff += (balanced_accuracy(y, pa) - balanced_accuracy(y, po)) / len(SHIFTED_DOMAINS)
            swap = rng.random((permutations, len(y))) < 0.5  # (P, n)
            swapped = balanced_accuracies(y, np.where(swap, po, pa)) - balanced_accuracies(y, np.where(swap, pa, po))
            diffs += swapped / len(SHIFTED_DOMAINS)
            b += int(((pa == y) & (po != y)).sum())
            c += int(((pa != y) & (po == y)).sum())
        observed.append(diff)
        null += diffs
    stat = float(np.mean(observed))
    null /= len(seeds)
    p = float((np.sum(np.abs(null) >= abs(stat) - 1e-12) + 1) / (permutations + 1))
    return {
        "difference": stat,
        "per_seed": [float(x) for x in observed],
        "permutation_p": p,
        "permutations": permutations,
        "mcnemar_p": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0,
        "arm_right_base_wrong": b,
        "arm_wrong_base_right": c,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/mmderm-bench-replication", help="data home (reused: cache, data)")
    parser.add_argument("--n", type=int, default=2400, help="SynthDerm cases over the three domains")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune", choices=("heads", "partial"), default="partial")
    parser.add_argument("--epochs", type=int, default=0, help="0: 30 for heads, the recipe's 10 for partial")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json; train nothing")
    args = parser.parse_args()
    if args.render:
        render(load_previous())
        return 0
    started = time.perf_counter()
    epochs = args.epochs or (30 if args.finetune == "heads" else int(RECIPE["train.epochs"]))
    base = dataclasses.replace(load_config("demo", env={}), home=Path(args.home))
    # 224 px whatever the demo preset uses: the authors' size, and the heads arms' (run when the demo was at 224).
    base = base.replace(
        **{"train.train_domains": '["dermoscopy"]', "train.epochs": str(epochs), "model.image_size": "224"}
    )
    if args.finetune == "partial":
        base = base.replace(**{k: v for k, v in RECIPE.items() if k != "train.epochs"})
    arms = ARMS if args.finetune == "heads" else PARTIAL_ARMS
    counts = ensure_data(base, args.n)
    print(f"data: {counts}", file=sys.stderr)
    runs = []
    for seed in args.seeds:
        for arm, (strategies, image_only) in arms.items():
            sets = {"train.seed": str(seed), "train.note_strategies": json.dumps(list(strategies))}
            cfg = base.replace(**sets, **(IMAGE_ONLY_LOSS if image_only else {}))
            if args.finetune == "partial" and image_only:
                # no loss term reaches the text tower: leave it frozen (its pooled features cached)
                cfg = cfg.replace(**{"train.trainable_text_layers": "0"})
            t0 = time.perf_counter()
            name = arm.replace(" ", "_").replace("(", "").replace(")", "")
            run_dir = cfg.home / "runs" / f"{args.finetune}-{name}-s{seed}"
            if (run_dir / "summary.json").is_file():  # done in an earlier, interrupted bench run
                version = json.loads((run_dir / "summary.json").read_text())["version"]
            else:
                version = run_training(cfg, run_dir).version
            row, cases = score(cfg, version, strategies, cfg.train.trainable_text_layers)
            seconds = round(time.perf_counter() - t0, 1)
            runs.append({"finetune": args.finetune, "arm": arm, "seed": seed, "version": version, **row,
                         "seconds": seconds, "cases": cases})  # fmt: skip
            print(f"{arm} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr)
    total = time.perf_counter() - started
    write_results(runs, counts, args, total, epochs)
    return 0


BASE_ARM = "image-only (CE image)"
TEXT_SIDE = ("text all", "fused all", "fused shifted", "text->image mAP", "image->text R@10")  # n/a for BASE_ARM
COLUMNS = [
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
SHIFTED = ("image clinical", "image atlas")
SHIFTED_DOMAINS = ("clinical", "atlas")


def summarise(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """arm -> column -> mean and sd over seeds."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rows = [r for r in runs if r["arm"] == arm]
        summary[arm] = {}
        for col in COLUMNS:
            values = [r[col] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[arm][col] = {"mean": statistics.fmean(values), "sd": sd}
        shifts = [statistics.fmean(r[c] for c in SHIFTED) for r in rows]
        sd = statistics.stdev(shifts) if len(shifts) > 1 else 0.0
        summary[arm]["image shifted"] = {"mean": statistics.fmean(shifts), "sd": sd}
    return summary


def table(summary: dict[str, dict[str, dict[str, float]]], label: str) -> list[str]:
    cols = [*COLUMNS[:3], "image shifted", *COLUMNS[3:]]
    lines = ["| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for arm, row in summary.items():
        cells = []
        for col in cols:
            untrained = arm == BASE_ARM and col in TEXT_SIDE  # its text branch never learned: no number to read
            cells.append("n/a" if untrained else f"{row[col]['mean']:.3f} ± {row[col]['sd']:.3f}")
        lines.append(f"| {label}: {arm} | " + " | ".join(cells) + " |")
    return lines


def reading(summary: dict[str, dict[str, dict[str, float]]], label: str) -> list[str]:
    """What a table says about the paper's claim, computed from it (so it cannot drift from the numbers)."""

    def short(arm: str) -> str:
        return arm.removeprefix("multimodal ")

    arms = [a for a in summary if a.startswith("multimodal")]
    shift = {a: summary[a]["image shifted"]["mean"] for a in summary}
    noise = max(summary[a]["image shifted"]["sd"] for a in summary)
    gains = {a: shift[a] - shift[BASE_ARM] for a in arms}
    best = max(gains, key=gains.get)
    return [
        f"- {label}: image branch under shift (mean of clinical and atlas) image-only {shift[BASE_ARM]:.3f}; "
        + ", ".join(f"{short(a)} {shift[a]:.3f}" for a in arms)
        + f". Largest gain over image-only {gains[best]:+.3f} ({short(best)}), "
        + ("within" if abs(gains[best]) <= noise else "beyond")
        + f" the seed sd of that column (up to {noise:.3f}). In domain (dermoscopy): image-only "
        f"{summary[BASE_ARM]['image dermoscopy']['mean']:.3f}; "
        + ", ".join(f"{short(a)} {summary[a]['image dermoscopy']['mean']:.3f}" for a in arms)
        + ".",
    ]


def load_previous() -> dict[str, Any]:
    """The arms already in paper_replication.json, by fine-tuning mode (a file from before the partial arms holds
    heads arms only)."""
    path = RESULTS / "paper_replication.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "modes" in data:
        return data
    runs = [{"finetune": "heads", **r} for r in data.get("runs", [])]
    args = {"finetune": "heads", **data.get("args", {})}  # run before --finetune existed: heads was the only mode
    return {
        "counts": data.get("counts", {}),
        "modes": {
            "heads": {
                "runs": runs,
                "seconds": data.get("seconds"),
                "args": args,
                "epochs": args.get("epochs"),
                "counts": data.get("counts", {}),
            }
        },
    }


def command(mode: dict[str, Any]) -> str:
    a = mode["args"]
    extra = f" --finetune {a['finetune']}" if "finetune" in a else ""
    return (
        f"python bench/paper_replication.py{extra} --home {a['home']} --n {a['n']} --seeds "
        f"{' '.join(map(str, a['seeds']))}" + (f" --epochs {a['epochs']}" if a.get("epochs") else "")
    )


def reduced_note(modes: dict[str, Any]) -> list[str]:
    """A plain statement when the partial arms ran on fewer cases or seeds than the heads arms (scarce CPU)."""
    if not {"heads", "partial"} <= modes.keys():
        return []
    h, p = modes["heads"]["args"], modes["partial"]["args"]
    if (h["n"], list(h["seeds"])) == (p["n"], list(p["seeds"])):
        return []
    tests = sum(v for k, v in modes["partial"].get("counts", {}).items() if k.startswith("test/"))
    return [
        f"**Reduced run.** The partial arms ran on {p['n']} SynthDerm cases and {len(p['seeds'])} seed(s) "
        f"({tests} test cases), the heads arms on {h['n']} cases and {len(h['seeds'])} seeds: CPU was scarce (2 cores "
        "shared with three other engineers). Compare arms within a mode; across modes the data differ, and with so few "
        "test cases per class a balanced accuracy moves by several points with one case.",
        "",
    ]


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def write_results(
    runs: list[dict], counts: dict[str, int], args: argparse.Namespace, seconds: float, epochs: int
) -> None:
    import os

    data = load_previous()
    modes = data.get("modes", {})
    load = os.getloadavg()
    modes[args.finetune] = {
        "runs": runs,
        "seconds": round(seconds, 1),
        "args": vars(args),
        "epochs": epochs,
        "load_average": [round(x, 2) for x in load],
        "counts": counts,  # per mode: a reduced partial run may use fewer cases than the heads arms
    }
    if args.finetune == "partial":
        modes["partial"]["paired_test"] = paired_test(runs, "multimodal P1", BASE_ARM)
    render({"counts": counts or data.get("counts", {}), "modes": modes})


def render(payload: dict[str, Any]) -> None:
    """Write paper_replication.md and .json from the arms of every mode."""
    modes = payload["modes"]
    summaries = {m: summarise(v["runs"]) for m, v in modes.items()}
    for m, sm in summaries.items():
        modes[m]["summary"] = sm
    lines = [
        "# Paper 000 on SynthDerm: dermoscopy-only training, test on three domains",
        "",
        "Setup: SynthDerm (seed 0, HAM10000-like class mix) split by lesion; training and validation on the "
        "`dermoscopy` domain only; test on the test split of all three domains. Default encoders (EfficientNet-Lite0 "
        "ImageNet + all-MiniLM-L6-v2); the paper uses DenseNet121 + PubMedBERT, whose weights cannot be fetched here.",
        "",
        *(
            f"Cases per split/domain, {m}: {counts_text(mode.get('counts') or payload['counts'])}."
            for m, mode in modes.items()
        ),
        "",
        "Image-only = CE on the image branch alone (every other loss weight 0). Multimodal = CE image + CE text + "
        "cosine + L1 + 0.5 x label-aware NT-Xent. All columns are balanced accuracy (mean recall over the classes "
        "present) unless named otherwise; `image *` is the image branch alone, `image shifted` the mean of clinical "
        "and atlas per seed; `text`/`fused` use each arm's own note strategy (the mix and the image-only arm: P1), "
        "`fused shifted` = clinical + atlas. Retrieval over the whole test split: text->image mAP (hit = same class), "
        "image->text R@10 (hit = the case's own note). Mean ± sd over seeds.",
        "",
        *reduced_note(modes),
        "## The arms",
        "",
    ]
    if "heads" in modes:
        h = modes["heads"]
        lines += [
            f"- **heads** (frozen backbones, features cached once, only the heads train; our demo preset: Adam lr "
            f"1e-3, batch 64, class-balanced sampling, NT-Xent temperature 0.07, {h['epochs']} epochs, model selection "
            f"on validation balanced accuracy). `{command(h)}`: {h['seconds'] / 60:.1f} min for that invocation "
            "(from an empty home it took 8.2 min, load average about 5).",
        ]
    if "partial" in modes:
        p = modes["partial"]
        lines += [
            "- **partial** (fine-tuned on CPU): EfficientNet-Lite0's last two MBConv blocks and conv_head/bn1 and "
            "MiniLM's top layer train with the heads (the image-only arm leaves the text tower frozen: no loss reaches "
            "it), on trunk activations cached once (a clean view and 2 augmented views per training image). The "
            "authors' recipe: Adam with amsgrad, lr 1e-4, weight decay 1e-5, batch 32 with drop_last, "
            "inverse-frequency (class-balanced) sampling, CE x2 + cosine + L1 + 0.5 x supervised NT-Xent at "
            f"temperature 0.5, {p['epochs']} epochs. `{command(p)}`: {p['seconds'] / 60:.1f} min on 2 shared CPU cores "
            f"(load average {', '.join(map(str, p['load_average']))} at the end). {p.get('note', '')}",
            "- Where we kept ours: EfficientNet-Lite0 + MiniLM instead of DenseNet121 + PubMedBERT (no such weights "
            "here); the last two image blocks instead of the whole image tower (a CPU; `full` needs a GPU and none "
            "was lent this session); the whole photo resized to 224 px instead of the lesion crop (the app explains "
            "whole photos, there is no mask at inference, and a crop at training only would shift the inputs; "
            "SynthDerm framing keeps the lesion central and large); model selection on validation balanced accuracy "
            "instead of early stopping on validation loss (with 10 epochs and patience 10 the authors' rule never "
            "stops, so it keeps the last epoch); no AMP (CPU).",
        ]
    lines += ["", "## Results", ""]
    tables = [table(summaries[m], m) for m in ("heads", "partial") if m in summaries]
    for i, rows in enumerate(tables):
        lines += rows if i == 0 else rows[2:]  # one header
    lines += ["", "Reading (computed from the tables):", ""]
    for m in ("heads", "partial"):
        if m in summaries:
            lines += reading(summaries[m], m)
    if "partial" in modes:
        t = modes["partial"]["paired_test"]
        counts_p = modes["partial"].get("counts") or payload["counts"]
        n_shift = sum(v for k, v in counts_p.items() if k.startswith("test/") and not k.endswith("dermoscopy"))
        lines += [
            f"- partial, paired over {len(t['per_seed'])} seeds x {n_shift} shifted test cases (multimodal P1 minus "
            f"image-only, image branch): balanced-accuracy difference {t['difference']:+.3f} (per seed "
            + ", ".join(f"{x:+.3f}" for x in t["per_seed"])
            + f"), paired permutation test p = {t['permutation_p']:.3f} ({t['permutations']} permutations, "
            "two-sided); McNemar on correctness: multimodal right where image-only was wrong "
            f"{t['arm_right_base_wrong']} times, the reverse {t['arm_wrong_base_right']} times, "
            f"exact p = {t['mcnemar_p']:.3f}.",
        ]
    lines += [
        "- Fine-tuning the top of the image tower is the path by which the paper's multimodal training could help "
        "the image encoder; the full fine-tune (all of DenseNet121) needs a GPU and was not run here.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "paper_replication.md").write_text("\n".join(lines))
    (RESULTS / "paper_replication.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
