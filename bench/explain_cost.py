"""Explanation cost in multiples of one forward pass: the default model (EfficientNet-Lite0 + MiniLM, packaged
weights, random heads: weights do not change the cost) at 224 px on CPU.

    python bench/explain_cost.py [--rounds 3] [--threads 1]

Each round times the reference forwards (median of 5) and then every method once; the ratio is taken per round and
the median over rounds is reported. The headline ratio is on this process's CPU time with one torch thread: on a
shared machine wall time swings with other jobs (and idle OpenMP threads spin), CPU time of one thread is the work
itself. Wall-clock ratios are reported beside it. Writes bench/results/explain_cost.md and .json.
Bar (the issue): Grad-CAM <= 3 forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmcore.cases import DX_CLASSES
from mmcore.config import load_config
from mmcore.explain_image import attribute_image
from mmcore.explain_text import attention_maps, integrated_gradients_text, pooled_relevance
from mmcore.model import build_model
from mmcore.notes import write_note
from mmcore.synthderm import generate_one

REPO = Path(__file__).resolve().parent.parent
GRADCAM_BAR = 3.0


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_time(fn: Callable[[], object], n: int) -> tuple[float, float]:
    runs = [timed(fn) for _ in range(n)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config("default", env={})
    torch.manual_seed(0)
    model = build_model(cfg.model, DX_CLASSES).eval()
    explainer = model.requires_grad_(False)  # as the Predictor's private copy: gradients reach inputs only
    sc = generate_one(0, seed=0, size=cfg.model.image_size)
    images = model.image_transform()(sc.image).unsqueeze(0)  # (1, 3, 224, 224)
    note = write_note("P1", sc.case, seed=0)
    tokens = model.tokenize([note])
    T = int(tokens["attention_mask"].sum())
    with torch.inference_mode():
        target = int(model(images=images).image_logits.argmax(-1))
        text_target = int(model(**tokens).text_logits.argmax(-1))

    def image_forward() -> None:
        with torch.inference_mode():
            model(images=images)

    def text_forward() -> None:
        with torch.inference_mode():
            model(**tokens)

    def attention() -> None:
        pooled_relevance(model.text_encoder, attention_maps(explainer, **tokens))

    def gradcam_with_weight_grads() -> None:
        model.requires_grad_(True)  # what a shared model without frozen weights would pay
        try:
            attribute_image(model, images, "gradcam", target)
        finally:
            model.requires_grad_(False)

    methods: dict[str, tuple[str, str, Callable[[], object]]] = {
        "gradcam": ("image", "LayerGradCam on the last conv block + bilinear upsampling",
                    lambda: attribute_image(explainer, images, "gradcam", target)),
        "gradcam (weights requiring grad)": ("image", "the same with the weights' requires_grad left on",
                                             gradcam_with_weight_grads),
        "ig, 32 steps": ("image", "IntegratedGradients, blurred baseline, internal_batch_size 16",
                         lambda: attribute_image(explainer, images, "ig", target, n_steps=32, batch_size=16)),
        "smoothgrad, 16 samples": ("image", "NoiseTunnel(Saliency), sd 0.15 of the range, 8 per batch",
                                   lambda: attribute_image(explainer, images, "smoothgrad", target, nt_samples=16)),
        "occlusion": ("image", "32 px window, stride 16 (169 windows), 16 per batch",
                      lambda: attribute_image(explainer, images, "occlusion", target, batch_size=16)),
        "text LIG, 32 steps": ("text", f"LayerIntegratedGradients on the token embeddings ({T} tokens)",
                               lambda: integrated_gradients_text(explainer, **tokens, target=text_target)),
        "attention + rollout": ("text", "eager attention maps of 6 layers x 12 heads, rollout", attention),
    }  # fmt: skip

    load_before = os.getloadavg()
    started = time.perf_counter()
    for fn in (image_forward, text_forward, *(m[2] for m in methods.values())):  # warm-up: allocator, kernels
        fn()
    ratios: dict[str, list[float]] = {name: [] for name in methods}  # on CPU time
    wall_ratios: dict[str, list[float]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    references: dict[str, list[tuple[float, float]]] = {"image": [], "text": []}
    for r in range(args.rounds):
        ref = {"image": median_time(image_forward, 5), "text": median_time(text_forward, 5)}
        for kind, value in ref.items():
            references[kind].append(value)
        for name, (kind, _, fn) in methods.items():
            wall, cpu = timed(fn)
            seconds[name].append(cpu)
            ratios[name].append(cpu / ref[kind][1])
            wall_ratios[name].append(wall / ref[kind][0])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    load_after = os.getloadavg()

    rows = []
    for name, (kind, what, _) in methods.items():
        rows.append({"method": name, "against": f"{kind} forward", "what": what,
                     "cpu_seconds": round(statistics.median(seconds[name]), 4),
                     "ratio": round(statistics.median(ratios[name]), 2),
                     "ratios": [round(x, 2) for x in ratios[name]],
                     "wall_ratio": round(statistics.median(wall_ratios[name]), 2)})  # fmt: skip
    gradcam = next(r for r in rows if r["method"] == "gradcam")["ratio"]
    payload = {
        "command": f"python bench/explain_cost.py --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, {platform.platform()}",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "model": f"{cfg.model.image_encoder} + {cfg.model.text_encoder}, random heads, {cfg.model.image_size} px",
        "reference_cpu_seconds": {k: round(statistics.median(c for _, c in v), 4) for k, v in references.items()},
        "reference_wall_seconds": {k: round(statistics.median(w for w, _ in v), 4) for k, v in references.items()},
        "rows": rows,
        "gradcam_bar": GRADCAM_BAR,
        "gradcam_meets_bar": gradcam <= GRADCAM_BAR,
        "seconds_total": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain_cost.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "explain_cost.md").write_text(render(payload))
    print(render(payload))
    return 0


def render(p: dict) -> str:
    ref = p["reference_cpu_seconds"]
    lines = [
        "# Explanation cost in forward passes",
        "",
        f"Command: `{p['command']}` ({p['seconds_total']} s).",
        "",
        f"Machine: {p['machine']}. Load average before/after: {p['load_average']['before']} / "
        f"{p['load_average']['after']}: other jobs shared the 2 cores. The ratio is this process's CPU time for the "
        "method over its CPU time for one reference forward (median of 5) in the same round, median over rounds: "
        "with one torch thread that is the work done, whatever else runs. Wall-clock ratios, noisy here, are beside.",
        "",
        f"Model: {p['model']}. Reference forwards (batch 1, `torch.inference_mode`): image "
        f"{ref['image'] * 1e3:.1f} ms, note {ref['text'] * 1e3:.1f} ms of CPU. Explanations run as the Predictor "
        "runs them: a model copy in eval mode whose weights do not require gradients, under the explanation lock.",
        "",
        "| method | against | what runs | CPU s (median) | **x one forward** | per round | wall ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        lines.append(
            f"| {r['method']} | {r['against']} | {r['what']} | {r['cpu_seconds']:.3f} | **{r['ratio']:.2f}** | "
            f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['wall_ratio']:.2f} |"
        )
    verdict = "meets" if p["gradcam_meets_bar"] else "MISSES"
    gradcam = next(r for r in p["rows"] if r["method"] == "gradcam")["ratio"]
    lines += ["", f"Bar: Grad-CAM at most {p['gradcam_bar']:.0f}x one forward: {gradcam:.2f}x, {verdict} it.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
