"""Explanations: the attribution entry points (from explain_image / explain_text), heat-map overlays (colour map,
blend, top-k% contour, colour bar), and their quality against lesion masks (pointing game, IoU, deletion AUC) with
`python -m mmcore eval --explanations`. Arrays and PIL images only; never streamlit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mmcore.explain_image import (
    IMAGE_METHODS,
    attribute_image,
    explaining,
    gradcam,
    image_baseline,
    image_forward,
    integrated_gradients,
    model_lock,
    occlusion,
    similarity_forward,
    similarity_maps,
    smoothgrad,
)
from mmcore.explain_text import (
    TokenAttribution,
    attention_maps,
    attention_rollout,
    integrated_gradients_text,
    merge_word_pieces,
    pooled_relevance,
)

__all__ = [
    "IMAGE_METHODS",
    "TokenAttribution",
    "attention_maps",
    "attention_rollout",
    "attribute_image",
    "colorbar",
    "colorize",
    "deletion_auc",
    "explaining",
    "gradcam",
    "image_baseline",
    "image_forward",
    "integrated_gradients",
    "integrated_gradients_text",
    "iou_at_top",
    "merge_word_pieces",
    "model_lock",
    "occlusion",
    "overlay",
    "pointing_game",
    "pooled_relevance",
    "similarity_forward",
    "similarity_maps",
    "smoothgrad",
    "top_region",
]

# Colour maps as 17 anchors (matplotlib's inferno, jet and viridis sampled at 0, 1/16, ..., 1), interpolated to
# 256 entries: no plotting library needed at run time.
# fmt: off
_ANCHORS = {
    "inferno": [(0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110), (138, 34, 106),
                (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29), (249, 142, 9),
                (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164)],
    "jet": [(0, 0, 128), (0, 0, 200), (0, 0, 255), (0, 64, 255), (0, 128, 255), (0, 192, 255), (22, 255, 225),
            (73, 255, 173), (125, 255, 122), (177, 255, 70), (228, 255, 19), (255, 208, 0), (255, 148, 0),
            (255, 89, 0), (255, 30, 0), (196, 0, 0), (128, 0, 0)],
    "viridis": [(68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141),
                (44, 114, 142), (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128), (63, 188, 115),
                (94, 201, 98), (132, 212, 75), (173, 220, 48), (216, 226, 25), (253, 231, 37)],
}
# fmt: on
COLORMAPS = tuple(_ANCHORS)
# Seed 002 (arXiv 2405.17459, "Key Results") reports this lesion-localisation IoU on its own data.
SEED_002_IOU = 0.89


def _lut(name: str) -> np.ndarray:
    if name not in _ANCHORS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float32)  # (17, 3)
    x = np.linspace(0, 1, len(anchors))
    grid = np.linspace(0, 1, 256)
    return np.stack([np.interp(grid, x, anchors[:, c]) for c in range(3)], -1).round().astype(np.uint8)  # (256, 3)


_LUTS = {name: _lut(name) for name in _ANCHORS}


# --- overlays -----------------------------------------------------------------------------------------------------


def colorize(heatmap: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    if colormap not in _LUTS:
        raise ValueError(f"unknown colour map {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    index = (np.clip(np.nan_to_num(heatmap), 0, 1) * 255 + 0.5).astype(np.uint8)
    return _LUTS[colormap][index]


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float map resized bilinearly to PIL `size` (width, height)."""
    if heatmap.shape[::-1] == tuple(size):
        return heatmap.astype(np.float32)
    resized = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def top_region(heatmap: np.ndarray, fraction: float) -> np.ndarray:
    """(H, W) bool: the `fraction` of pixels with the highest values (ties broken by position)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = heatmap.ravel()
    n = max(1, int(round(fraction * flat.size)))
    region = np.zeros(flat.size, dtype=bool)
    region[np.argsort(-flat, kind="stable")[:n]] = True
    return region.reshape(heatmap.shape)


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    opacity: float = 0.45,
    colormap: str = "inferno",
    contour_top: float | None = 0.2,
    contour_color: tuple[int, int, int] = (0, 255, 255),
) -> Image.Image:
    """The photo blended with the coloured heat map at `opacity`, and the outline of the top `contour_top` region."""
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    heat = resize_map(heatmap, image.size)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - opacity) * base + opacity * colorize(heat, colormap).astype(np.float32)
    out = Image.fromarray(blended.round().astype(np.uint8))
    if contour_top:
        region = Image.fromarray(top_region(heat, contour_top).astype(np.uint8) * 255)
        width = max(3, (min(image.size) // 150) * 2 + 1)  # an odd filter size: about 2 px per 300 px of image
        edge = np.asarray(region.filter(ImageFilter.MaxFilter(width))) != np.asarray(
            region.filter(ImageFilter.MinFilter(width))
        )
        pixels = np.array(out)
        pixels[edge] = contour_color
        out = Image.fromarray(pixels)
    return out


def colorbar(
    colormap: str = "inferno", length: int = 256, thickness: int = 16, labels: tuple[str, str] = ("low", "high")
) -> Image.Image:
    """A horizontal colour bar with its two end labels, for the legend beside an overlay."""
    bar = np.repeat(colorize(np.linspace(0, 1, length)[None, :], colormap), thickness, axis=0)  # (thickness, L, 3)
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (length, thickness + 14), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((0, thickness + 1), labels[0], fill=(0, 0, 0), font=font)
    right = draw.textlength(labels[1], font=font)
    draw.text((length - right, thickness + 1), labels[1], fill=(0, 0, 0), font=font)
    return canvas


# --- quality against lesion masks -------------------------------------------------------------------------------


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the heat map's maximum falls inside the lesion mask, else 0.0 (Zhang et al.)."""
    heat = resize_map(heatmap, mask.shape[::-1])
    return float(mask.ravel()[int(np.argmax(heat))])


def iou_at_top(heatmap: np.ndarray, mask: np.ndarray, fraction: float | None = None) -> float:
    """IoU of the top-`fraction` region with the mask; None: the mask's own area fraction (equal-size regions)."""
    heat = resize_map(heatmap, mask.shape[::-1])
    fraction = float(mask.mean()) if fraction is None else fraction
    if fraction <= 0:
        return float("nan")
    region = top_region(heat, fraction)
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else float("nan")


def deletion_auc(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    heatmap: np.ndarray,
    target: int,
    steps: int = 16,
    fill: torch.Tensor | None = None,
) -> float:
    """Deletion (Petsiuk et al., RISE): remove the most salient pixels first, in `steps` equal chunks, replacing them
    with `fill` (default 0: the mean colour); the area under the target's probability curve. Lower is better.

    images: (1, 3, H, W) normalised; heatmap: (H, W) at the same size.
    """
    _, _, H, W = images.shape
    heat = resize_map(heatmap, (W, H))
    order = torch.from_numpy(np.argsort(-heat.ravel(), kind="stable").copy())
    fill = torch.zeros_like(images) if fill is None else fill
    cuts = np.linspace(0, H * W, steps + 1).round().astype(int)
    batch = []
    for n in cuts:
        keep = torch.ones(H * W, device=images.device)
        keep[order[:n].to(images.device)] = 0
        keep = keep.view(1, 1, H, W)
        batch.append(images * keep + fill * (1 - keep))
    with torch.no_grad():
        probs = forward(torch.cat(batch)).softmax(-1)[:, target].double().cpu().numpy()  # (steps + 1,)
    return float(np.trapezoid(probs, dx=1.0 / steps))


def _random_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return rng.random(shape).astype(np.float32)


def _centre_map(shape: tuple[int, int]) -> np.ndarray:
    """A centred Gaussian: the prior that lesions sit in the middle of the photo, as a baseline to beat."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    r2 = ((ys - (shape[0] - 1) / 2) / shape[0]) ** 2 + ((xs - (shape[1] - 1) / 2) / shape[1]) ** 2
    return np.exp(-r2 / (2 * 0.2**2)).astype(np.float32)


def evaluate_explanations(
    model: Any,
    samples: Sequence[tuple[Image.Image, np.ndarray, str]],
    methods: Sequence[str] = IMAGE_METHODS,
    progress: Callable[[Any], Any] = lambda it: it,
) -> dict[str, dict[str, float]]:
    """Mean pointing game, IoU (top mask-area and top 20%) and deletion AUC per method over (image, mask, dx) samples.

    The maps explain the true class through the image-only logits. "random" and "centre" rows are baselines: a
    method that does not beat the centre prior is not localising the lesion on these images.
    """
    transform = model.image_transform()
    device = next(model.parameters()).device
    forward = image_forward(model)
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in (*methods, "random", "centre")}
    for image, mask, dx in progress(samples):
        images = transform(image).unsqueeze(0).to(device)  # (1, 3, S, S)
        target = model.classes.index(dx)
        S = images.shape[-1]
        maps = {m: attribute_image(model, images, m, target)[0].cpu().numpy() for m in methods}
        maps["random"], maps["centre"] = _random_map((S, S), rng), _centre_map((S, S))
        with explaining(model):
            for name, heat in maps.items():
                rows[name].append(
                    (
                        pointing_game(heat, mask),
                        iou_at_top(heat, mask),
                        iou_at_top(heat, mask, 0.2),
                        deletion_auc(forward, images, heat, target),
                    )
                )
    keys = ("pointing_game", "iou_mask_area", "iou_top20", "deletion_auc")
    return {
        name: {"n": len(values), **{k: float(np.nanmean([v[i] for v in values])) for i, k in enumerate(keys)}}
        for name, values in rows.items()
        if values
    }


def cli_eval_explanations(args: argparse.Namespace, cfg: Any) -> int:
    """`python -m mmcore eval --explanations [--model V] [--split test] [--limit N] [--json]` on SynthDerm masks."""
    from tqdm import tqdm

    from mmcore.cases import CaseStore
    from mmcore.cli import CliError, emit
    from mmcore.model_store import ModelStoreError, load_version

    try:
        loaded = load_version(cfg, getattr(args, "model", None))
    except ModelStoreError as e:
        raise CliError(str(e)) from None
    model = loaded.model.eval().requires_grad_(False)  # gradients flow to inputs and activations only
    split = getattr(args, "split", "test") or "test"
    limit = int(getattr(args, "limit", 0) or 0)
    with CaseStore(cfg.home) as store:
        cases = [c for c in store.cases(split=split) if c.mask_path and c.dx in model.classes]
        cases = cases[:limit] if limit else cases
        if not cases:
            raise CliError(f"no {split} cases with a lesion mask in {cfg.home} (SynthDerm cases have them)")
        samples = [(store.load_image(c), store.load_mask(c), c.dx) for c in cases]
    methods = tuple(getattr(args, "methods", None) or IMAGE_METHODS)
    results = evaluate_explanations(
        model, samples, methods, progress=lambda it: tqdm(it, desc="explanations", unit="case", file=sys.stderr)
    )
    payload = {
        "model_version": loaded.version,
        "split": split,
        "cases": len(samples),
        "methods": results,
        "reference": {
            "seed_002_lesion_iou": SEED_002_IOU,
            "note": "seed 002 (arXiv 2405.17459) on its own data; its localisation is not a saliency map",
        },
    }
    lines = [
        f"explanation quality: model {loaded.version}, {len(samples)} {split} cases with lesion masks "
        "(target: the true class, image-only logits)",
        f"{'method':<11} {'pointing':>8} {'IoU@mask':>8} {'IoU@20%':>8} {'deletion':>8}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<11} {r['pointing_game']:>8.3f} {r['iou_mask_area']:>8.3f} {r['iou_top20']:>8.3f} "
            f"{r['deletion_auc']:>8.3f}"
        )
    lines += [
        "pointing, IoU: higher is better; deletion AUC: lower is better. random and centre are baselines.",
        f"reference: seed 002 (arXiv 2405.17459) reports lesion-localisation IoU {SEED_002_IOU:.2f} on its own data "
        "(a trained localiser, not a saliency map: not directly comparable).",
    ]
    emit(args, payload, "\n".join(lines))
    return 0
