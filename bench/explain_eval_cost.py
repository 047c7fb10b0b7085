"""What `python -m mmcore eval --explanations` costs per case and method, with today's settings and with cheaper ones
proposed for mmcore/explain_image.py and explain_quality.py (applied here by wrapping their functions), and whether
the cheaper settings change the scores.

Proposed: Integrated Gradients 16 steps instead of 32 (Captum's Gauss-Legendre rule), SmoothGrad 8 samples instead
of 16, Occlusion windows that do not overlap (stride = window, 49 forwards at 7 x 7 windows instead of 169), the
deletion curve in 8 steps instead of 16.

    python bench/explain_eval_cost.py --home HOME [--version V] [--cases 8]

Writes bench/results/explain_eval_cost.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mmcore.explain_image as explain_image
import mmcore.explain_quality as explain_quality
from mmcore.cases import CaseStore
from mmcore.config import load_config
from mmcore.explain_image import IMAGE_METHODS
from mmcore.model_store import load_version

RESULTS = Path(__file__).resolve().parent / "results"
PROPOSED = {"ig_steps": 16, "smoothgrad_samples": 8, "occlusion_stride": "= window", "deletion_steps": 8}


@contextlib.contextmanager
def proposed() -> Iterator[None]:
    """The proposed settings, by wrapping the functions evaluate_explanations calls."""
    attribute, occlusion, deletion = (
        explain_quality.attribute_image,
        explain_image.occlusion,
        explain_quality.deletion_auc,
    )

    def attribute_image(*args, **kwargs):
        return attribute(*args, **{"n_steps": 16, "nt_samples": 8, **kwargs})

    def occlusion_(forward, images, target=None, window=0, stride=0, batch_size=16):
        window = window or max(2, images.shape[-1] // 7)
        return occlusion(forward, images, target, window, stride or window, batch_size)

    def deletion_auc(*args, **kwargs):
        return deletion(*args, **{"steps": 8, **kwargs})

    explain_quality.attribute_image, explain_image.occlusion, explain_quality.deletion_auc = (
        attribute_image,
        occlusion_,
        deletion_auc,
    )
    try:
        yield
    finally:
        explain_quality.attribute_image, explain_image.occlusion, explain_quality.deletion_auc = (
            attribute,
            occlusion,
            deletion,
        )


def sample(cfg, model, limit: int) -> list:
    """The first `limit` cases of the 40-case sample score_version takes (an even spread over the test split)."""
    with CaseStore(cfg.home) as store:
        cases = [c for c in store.cases(split="test") if c.mask_path and c.dx in model.classes]
        cases = [cases[round(i * len(cases) / 40)] for i in range(40)][:limit]
        return [(store.load_image(c), store.load_mask(c), c.dx) for c in cases]


def timed(model, samples: list, methods: tuple[str, ...]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    scores = explain_quality.evaluate_explanations(model, samples, methods)
    return scores, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--version", default=None)
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()
    cfg = dataclasses.replace(load_config("demo", env={}), home=Path(args.home))
    loaded = load_version(cfg, args.version, device="cpu")
    model = loaded.model.eval().requires_grad_(False)
    samples = sample(cfg, model, args.cases)
    timed(model, samples[:1], ("gradcam",))  # warm-up
    rows: dict[str, dict] = {}
    for setting in ("today", "proposed"):
        with proposed() if setting == "proposed" else contextlib.nullcontext():
            per_method = {}
            for m in IMAGE_METHODS:  # each alone (its attribution and its deletion curve), baselines included
                _, seconds = timed(model, samples, (m,))
                per_method[m] = seconds / len(samples)
            _, baselines = timed(model, samples, ())
            scores, seconds = timed(model, samples, IMAGE_METHODS)
        rows[setting] = {
            "seconds_per_case": seconds / len(samples),
            "projected_40_cases_s": 40 * seconds / len(samples),
            "per_method_alone_s": per_method,
            "baselines_only_s": baselines / len(samples),
            "scores": scores,
        }
        print(setting, json.dumps(rows[setting]), file=sys.stderr)
    load = [round(x, 2) for x in os.getloadavg()]
    payload = {"version": loaded.version, "cases": len(samples), "proposed": PROPOSED, "rows": rows, "load": load}
    lines = [
        "# The cost of `eval --explanations`, today and with cheaper settings",
        "",
        f"Command: `python bench/explain_eval_cost.py --home {args.home} --version {loaded.version} --cases "
        f"{len(samples)}` on 2 shared CPU cores (load average {', '.join(map(str, load))} at the end: absolute times "
        "are noisy, the ratio between the two settings measured in this one run is what to read).",
        "",
        f"The first {len(samples)} cases of the 40-case sample; four methods with their deletion curves, and the "
        "random and centre baselines. Proposed: " + ", ".join(f"{k} {v}" for k, v in PROPOSED.items()) + ".",
        "",
        "| setting | s per case (all four) | 40 cases, projected | gradcam | ig | smoothgrad | occlusion |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        pm = r["per_method_alone_s"]
        lines.append(
            f"| {name} | {r['seconds_per_case']:.1f} | {r['projected_40_cases_s'] / 60:.1f} min | "
            + " | ".join(f"{pm[m]:.1f}" for m in IMAGE_METHODS)
            + " |"
        )
    ratio = rows["today"]["seconds_per_case"] / rows["proposed"]["seconds_per_case"]
    lines += ["", f"Proposed / today: {1 / ratio:.2f} of the time ({ratio:.1f}x faster).", "", "Scores on these cases:"]
    lines += ["", "| setting | method | pointing | IoU@mask | IoU@20% | deletion AUC |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for m, s in r["scores"].items():
            lines.append(
                f"| {name} | {m} | {s['pointing_game']:.3f} | {s['iou_mask_area']:.3f} | {s['iou_top20']:.3f} | "
                f"{s['deletion_auc']:.3f} |"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explain_eval_cost.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "explain_eval_cost.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
