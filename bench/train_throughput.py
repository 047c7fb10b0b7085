"""Training step throughput: real training steps (data loading included) against model-only steps on one
preloaded batch, for the default configuration on CPU (full fine-tune and frozen backbones) and for the paper's
configuration (DenseNet121 + a BERT-base-sized text tower, full fine-tune, 224 px, batch 32) on a CUDA GPU.

    python bench/train_throughput.py [--home DIR] [--n 200] [--steps 2] [--frozen-steps 100] [--rounds 2]

The ratio model-only / real says how much of a step the input pipeline costs. Absolute numbers depend on what
else the machine runs; the ratios are measured in one run. Writes bench/results/train_throughput.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import REPO_ROOT, Config, load_config
from mmcore.datasets import FeatureBatches, ImageTextBatches, cached_features, load_case_set
from mmcore.losses import total_loss
from mmcore.model import build_model
from mmcore.train import LoopState, StepResult, train_loop

RESULTS = REPO_ROOT / "bench" / "results"


def ensure_data(cfg: Config, n: int) -> None:
    from mmcore.synthderm import generate_into

    with CaseStore(cfg.home) as store:
        if store.count() == 0:
            generate_into(store, n, seed=0, size=cfg.model.image_size, balanced=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: Config, device: torch.device, steps: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Median seconds per step of the real loop (train_loop over the store) and of model-only steps on one batch,
    measured in `rounds` interleaved rounds of `steps` steps each after `warmup` steps of each."""
    t = cfg.train
    torch.manual_seed(0)
    model = build_model(cfg.model, DX_CLASSES)
    if t.finetune == "heads":
        model.freeze_backbones()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    use_amp = t.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    with CaseStore(cfg.home) as store:
        cases = load_case_set(store, "train", DX_CLASSES, t.note_strategies)
        extract = None
        if t.finetune == "heads":
            t0 = time.perf_counter()
            images, texts = cached_features(model, store, cases, cfg.cache_dir, device)
            extract = time.perf_counter() - t0
            batches = FeatureBatches(cases, images, texts, t.batch_size, balanced=True, seed=0, device=device)
            net = model.heads
        else:
            batches = ImageTextBatches(
                store,
                cases,
                model,
                t.batch_size,
                augment=t.augment,
                balanced=True,
                seed=0,
                device=device,
                num_workers=t.num_workers,
            )
            net = model
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=t.lr)
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
        run_cfg = cfg.replace(**{"train.epochs": "100000"})
        # Real: the training loop itself, fed by the store (decode, augment, tokenize, copy) at every step.
        loop = train_loop(net, optimizer, scaler, batches, None, net, run_cfg, LoopState(), autocast=autocast)
        inputs, labels = next(batches.epoch(0))  # model only: one batch already on the device

        def real_steps(k: int) -> list[float]:
            times, last = [], time.perf_counter()
            while len(times) < k:
                if isinstance(next(loop), StepResult):
                    _sync(device)
                    now = time.perf_counter()
                    times.append(now - last)
                    last = now
            return times

        def model_steps(k: int) -> list[float]:
            times = []
            for _ in range(k):
                _sync(device)
                t0 = time.perf_counter()
                with autocast():
                    loss = total_loss(net(**inputs), labels, cfg.loss)
                scaler.scale(loss.total).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                _sync(device)
                times.append(time.perf_counter() - t0)
            return times

        real_steps(warmup)
        model_steps(warmup)
        real_times, model_times = [], []
        for _ in range(rounds):  # interleaved, so a change in the machine's load hits both alike
            real_times += real_steps(steps)
            model_times += model_steps(steps)
        real, model_only = statistics.median(real_times), statistics.median(model_times)
    out = {
        "batch_size": t.batch_size,
        "real_s_per_step": real,
        "model_only_s_per_step": model_only,
        "real_samples_per_s": t.batch_size / real,
        "model_only_samples_per_s": t.batch_size / model_only,
        "model_only_over_real": model_only / real,
        "amp": str(amp_dtype).removeprefix("torch.") if use_amp else "off",
        "timed_steps": len(real_times),
    }
    if extract is not None:
        out["feature_extraction_s"] = extract
        out["feature_extraction_cases"] = len(cases)
    return out


def random_bert_dir(path: Path) -> Path:
    """A BERT-base-sized random BertModel with a WordPiece tokenizer, written offline (stands in for PubMedBERT)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from mmcore.text_encoders import SPECIAL_TOKENS, TINY_WORDS

    path.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?()-/%'\"+")
    vocab = [*SPECIAL_TOKENS, *sorted(set(TINY_WORDS)), *chars, *(f"##{c}" for c in chars)]
    vocab += [f"[unused{i}]" for i in range(30522 - len(vocab))]  # PubMedBERT's vocabulary size
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    BertModel(BertConfig(vocab_size=len(vocab))).save_pretrained(path)  # 12 layers, hidden 768
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/mmderm-bench-throughput")
    parser.add_argument("--n", type=int, default=200, help="SynthDerm cases to draw batches from")
    parser.add_argument("--steps", type=int, default=2, help="timed full fine-tune steps per round and kind")
    parser.add_argument("--frozen-steps", type=int, default=100, help="timed frozen-mode steps per round and kind")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of real and model-only steps")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    home = Path(args.home)
    results: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        }
    }
    default = dataclasses.replace(load_config("default", env={}), home=home)
    ensure_data(default, args.n)
    cpu = torch.device("cpu")
    for name, frozen, steps in (
        ("default, full fine-tune (CPU)", "full", args.steps),
        ("default, frozen backbones (CPU)", "heads", args.frozen_steps),
    ):
        cfg = default.replace(**{"train.finetune": frozen})
        print(f"measuring {name} ...", file=sys.stderr)
        results[name] = measure(cfg, cpu, steps, args.rounds, args.warmup)
        print(f"  {results[name]}", file=sys.stderr)

    paper = "paper: densenet121 + BERT-base, full fine-tune, 224 px, batch 32 (CUDA)"
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            bert = random_bert_dir(Path(tmp) / "bert")
            cfg = dataclasses.replace(load_config("paper", env={}), home=home)
            cfg = cfg.replace(**{"model.text_encoder_path": str(bert), "model.image_encoder_path": ""})
            results[paper] = measure(cfg, torch.device("cuda"), 20, args.rounds, 5)
            results[paper]["device"] = torch.cuda.get_device_name()
            results[paper]["note"] = "DenseNet121 from the torch hub cache if present, else random init (same cost)"
    else:
        results[paper] = "not measured: no CUDA device"
    write_results(results, args)
    return 0


def write_results(results: dict[str, Any], args: argparse.Namespace) -> None:
    lines = [
        "# Training step throughput",
        "",
        f"Command: `python bench/train_throughput.py --home {args.home} --n {args.n} --steps {args.steps} "
        f"--frozen-steps {args.frozen_steps} --rounds {args.rounds} --warmup {args.warmup}`",
        "",
        f"Machine: torch {results['machine']['torch']}, {results['machine']['cpu_threads']} CPU threads, CUDA "
        f"{'yes' if results['machine']['cuda'] else 'no'}. Other work shared the 2 CPU cores while this ran, so "
        "absolute times are noisy; the ratio in each row was measured back to back.",
        "",
        "Real = `train_loop` fed by the case store (PNG decode, augmentation, tokenisation; for frozen backbones the "
        "cached feature tensors). Model only = the same forward/backward/Adam step repeated on one batch already in "
        "memory. Medians over interleaved rounds of real and model-only steps (after warm-up); model-only / real "
        "near 1 means the input pipeline costs little.",
        "",
        "| configuration | batch | real s/step | model-only s/step | real samples/s | model-only samples/s | "
        "model-only / real |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name == "machine":
            continue
        if isinstance(r, str):
            lines.append(f"| {name} | 32 | {r} | | | | |")
            continue
        lines.append(
            f"| {name} | {r['batch_size']} | {r['real_s_per_step']:.4f} | {r['model_only_s_per_step']:.4f} | "
            f"{r['real_samples_per_s']:.1f} | {r['model_only_samples_per_s']:.1f} | {r['model_only_over_real']:.2f} |"
        )
    frozen = results.get("default, frozen backbones (CPU)")
    if isinstance(frozen, dict) and "feature_extraction_s" in frozen:
        lines += [
            "",
            f"Frozen mode, one-off feature extraction (or cache read when already cached): "
            f"{frozen['feature_extraction_s']:.1f} s for {frozen['feature_extraction_cases']} training "
            "cases (images and every note).",
        ]
    lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.md").write_text("\n".join(lines))
    (RESULTS / "train_throughput.json").write_text(json.dumps({"results": results, "args": vars(args)}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
