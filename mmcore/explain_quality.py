"""How well an image explanation localises the lesion, scored against ground-truth masks: pointing game, IoU at the
mask's area, deletion AUC (Petsiuk et al.), with random and centre-prior baselines a method must beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmcore.explain_image import IMAGE_METHODS, attribute_image, explaining, image_forward
from mmcore.overlays import resize_map, top_region

# Seed 002 (arXiv 2405.17459, "Key Results") reports this lesion-localisation IoU on its own data.
SEED_002_IOU = 0.89


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


def score_version(
    cfg: Any,
    loaded: Any,
    split: str = "test",
    limit: int = 40,
    methods: Sequence[str] = IMAGE_METHODS,
    progress: Callable[[Any], Any] = lambda it: it,
) -> dict[str, Any]:
    """Score a loaded version's explanations on up to `limit` cases of `split` that have lesion masks (0: all),
    store the result in its model card (`explanation_quality`) and return it. ValueError when no case has a mask.
    """
    from mmcore.cases import CaseStore
    from mmcore.model_store import update_card

    model = loaded.model.eval().requires_grad_(False)  # gradients flow to inputs and activations only
    with CaseStore(cfg.home) as store:
        cases = [c for c in store.cases(split=split) if c.mask_path and c.dx in model.classes]
        if not cases:
            raise ValueError(f"no {split} cases with a lesion mask in {cfg.home} (SynthDerm cases have them)")
        if limit and len(cases) > limit:  # an even spread over the split, not its first cases
            cases = [cases[round(i * len(cases) / limit)] for i in range(limit)]
        samples = [(store.load_image(c), store.load_mask(c), c.dx) for c in cases]
    results = evaluate_explanations(model, samples, methods, progress=progress)
    quality = {
        "split": split,
        "n": len(samples),
        "target": "the true class, image-only logits",
        "methods": {m: r for m, r in results.items() if m in methods},
        "baselines": {m: r for m, r in results.items() if m not in methods},
    }
    update_card(cfg, loaded.version, lambda card: setattr(card, "explanation_quality", quality))
    return quality
