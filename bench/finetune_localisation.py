"""Where Grad-CAM points on SynthDerm, per candidate layer and model, against the lesion masks; and what a map of the
last feature map's resolution can reach at best (its ceiling), per input size.

Ceiling: the oracle map, each cell of a g x g grid holding the share of its pixels inside the lesion, upsampled
bilinearly as Grad-CAM's map is. The peak of a bilinearly upsampled map always lies on a cell centre, so a lesion
that covers no cell centre can never be pointed at, whatever the model learned.

    python bench/finetune_localisation.py --home HOME --versions V1 V2 ... [--labels a b ...] [--limit 40]

Writes bench/results/finetune_localisation.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution

from mmcore.cases import CaseStore
from mmcore.config import load_config
from mmcore.explain_image import explaining, gradcam, image_forward
from mmcore.explain_quality import _centre_map, iou_at_top, pointing_game
from mmcore.model_store import load_version

RESULTS = Path(__file__).resolve().parent / "results"


def test_sample(home: Path, limit: int) -> tuple[list, list]:
    """(the score_version sample of `limit` test cases with masks, every test case with a mask)."""
    with CaseStore(home) as store:
        cases = [c for c in store.cases(split="test") if c.mask_path]
        picked = [cases[round(i * len(cases) / limit)] for i in range(limit)] if len(cases) > limit else cases
        return [(store.load_image(c), store.load_mask(c), c.dx) for c in picked], [store.load_mask(c) for c in cases]


def ceilings(masks: list[np.ndarray], grids: tuple[int, ...]) -> dict[int, dict[str, float]]:
    out = {}
    for g in grids:
        pg, iou = [], []
        for m in masks:
            cell = F.adaptive_avg_pool2d(torch.from_numpy(m.astype(np.float32))[None, None], g)  # lesion share
            up = LayerAttribution.interpolate(cell, m.shape, interpolate_mode="bilinear")[0, 0].numpy()
            pg.append(pointing_game(up, m))
            iou.append(iou_at_top(up, m))
        out[g] = {"pointing_game": float(np.mean(pg)), "iou_mask_area": float(np.nanmean(iou))}
    return out


def candidate_layers(encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """EfficientNet-Lite0: the head and the outputs of the last blocks, and of the last H/16 block."""
    blocks = encoder.blocks
    return {
        "head (conv_head/bn1/ReLU6)": encoder.head_act,
        **{f"block {i} output": blocks[i] for i in (15, 14, 13, 10)},
    }


def layer_scores(model, samples: list) -> dict[str, dict[str, float]]:
    transform = model.image_transform()
    images = torch.stack([transform(im.convert("RGB")) for im, _, _ in samples])
    targets = [model.classes.index(dx) for _, _, dx in samples]
    rows = {}
    with explaining(model):
        current = model.image_encoder.gradcam_layer
        for name, layer in candidate_layers(model.image_encoder).items():
            maps = gradcam(image_forward(model), layer, images, targets).numpy()
            pg = [pointing_game(m, mask) for m, (_, mask, _) in zip(maps, samples, strict=True)]
            iou = [iou_at_top(m, mask) for m, (_, mask, _) in zip(maps, samples, strict=True)]
            label = f"{name}{' (gradcam_layer)' if layer is current else ''}"
            rows[label] = {"pointing_game": float(np.mean(pg)), "iou_mask_area": float(np.nanmean(iou))}
        with torch.no_grad():
            accuracy = float((image_forward(model)(images).argmax(-1).numpy() == np.array(targets)).mean())
    return {"layers": rows, "image_accuracy_on_sample": accuracy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--versions", nargs="*", default=[])
    parser.add_argument("--labels", nargs="*", default=[])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", default="finetune_localisation")
    args = parser.parse_args()
    started = time.perf_counter()
    cfg = dataclasses.replace(load_config("demo", env={}), home=Path(args.home))
    samples, all_masks = test_sample(cfg.home, args.limit)
    grids = (7, 8, 9, 10, 14)
    ceiling = {"sample": ceilings([m for _, m, _ in samples], grids), "all": ceilings(all_masks, grids)}
    centre = [(_centre_map(m.shape), m) for _, m, _ in samples]
    baseline = {
        "pointing_game": float(np.mean([pointing_game(c, m) for c, m in centre])),
        "iou_mask_area": float(np.nanmean([iou_at_top(c, m) for c, m in centre])),
    }
    models = {}
    for i, version in enumerate(args.versions):
        loaded = load_version(cfg, version, device="cpu")
        model = loaded.model.eval().requires_grad_(False)
        label = args.labels[i] if i < len(args.labels) else version
        models[label] = {"version": version, "image_size": model.image_spec.image_size, **layer_scores(model, samples)}
        print(label, json.dumps(models[label]), file=sys.stderr)
    areas = np.array([m.mean() for _, m, _ in samples])
    load = [round(x, 2) for x in os.getloadavg()]
    payload = {"home": args.home, "n": len(samples), "n_all": len(all_masks), "ceiling": ceiling,
               "centre_prior": baseline, "models": models, "seconds": round(time.perf_counter() - started, 1),
               "load": load}  # fmt: skip
    lines = [
        "# Grad-CAM localisation on SynthDerm: layers, models, and the ceiling of the map's resolution",
        "",
        f"Command: `python bench/finetune_localisation.py --home {args.home} --versions {' '.join(args.versions)}"
        f"{' --labels ' + ' '.join(args.labels) if args.labels else ''} --limit {args.limit}` "
        f"({payload['seconds'] / 60:.1f} min, load average {', '.join(map(str, load))}).",
        "",
        f"The {len(samples)}-case test sample that `eval --explanations` scores (an even spread over the test split; "
        f"lesion area {areas.mean():.1%} of the image on average, median {np.median(areas):.1%}, under 2% for "
        f"{np.mean(areas < 0.02):.0%} of them). Grad-CAM of the true class through the image-only logits. Pointing "
        "game: the map's peak inside the lesion mask; IoU at the mask's area: the top region of the mask's size "
        "against the mask.",
        "",
        "## The ceiling of a g x g map (the oracle map: each cell's lesion share, upsampled bilinearly)",
        "",
        "| last feature map | input size (EfficientNet, stride 32) | sample: pointing | sample: IoU@mask | "
        f"all {len(all_masks)} test: pointing | all test: IoU@mask |",
        "|---|---|---|---|---|---|",
    ]
    for g in grids:
        s, a = ceiling["sample"][g], ceiling["all"][g]
        lines.append(
            f"| {g} x {g} | {32 * g} px | {s['pointing_game']:.3f} | {s['iou_mask_area']:.3f} | "
            f"{a['pointing_game']:.3f} | {a['iou_mask_area']:.3f} |"
        )
    lines += [
        "",
        f"Centre prior (a fixed Gaussian): pointing {baseline['pointing_game']:.3f}, IoU@mask "
        f"{baseline['iou_mask_area']:.3f}.",
        "",
        "## Grad-CAM per layer",
        "",
        "| model | input | image accuracy on the sample | layer | pointing | IoU@mask |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in models.items():
        for layer, r in m["layers"].items():
            lines.append(
                f"| {label} | {m['image_size']} px | {m['image_accuracy_on_sample']:.3f} | {layer} | "
                f"{r['pointing_game']:.3f} | {r['iou_mask_area']:.3f} |"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
