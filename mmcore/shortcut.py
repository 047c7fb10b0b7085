"""The shortcut check: how confident a model's image branch is on SynthDerm photos whose lesion was never drawn (the
same skin, hair, light, framing and acquisition domain). A model that reads the lesion has nothing to go on there; a
confident one learned the background.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmcore.calibrate import apply_temperature
from mmcore.cases import DOMAINS
from mmcore.model import MultimodalModel

SHORTCUT_SEED = 9_001  # a SynthDerm seed no demo or bench dataset uses: scenes the model has never seen


@torch.inference_mode()
def image_probabilities(
    model: MultimodalModel, images: Sequence[Any], temperature: float = 1.0, batch_size: int = 32
) -> np.ndarray:
    """(N, C) image-branch probabilities of PIL photos (eval transform), softmax(logits / temperature)."""
    transform = model.image_transform(train=False)
    device = next(model.parameters()).device
    logits = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(im.convert("RGB")) for im in images[start : start + batch_size]]).to(device)
        feats = model.image_encoder.eval()(batch)  # (B, F_img)
        logits.append(model.forward_features(image_features=feats).image_logits.float().cpu())
    return apply_temperature(torch.cat(logits).numpy(), temperature)


def shortcut_check(
    model: MultimodalModel,
    temperature: float = 1.0,
    n: int = 200,
    seed: int = SHORTCUT_SEED,
    domains: Sequence[str] = DOMAINS,
) -> dict[str, Any]:
    """The image branch on n SynthDerm scenes rendered without their lesion and, paired, with it.

    Returns the mean top probability (after `temperature`, the version's calibration, and before), the share of
    each predicted class without the lesion, and the same scenes' scores with the lesion for contrast. Chance is
    1 / C; a model that reads the lesion stays near it without one.
    """
    from mmcore.synthderm import generate_one

    size = model.image_spec.image_size
    model = model.eval()
    rows: dict[str, dict[str, Any]] = {}
    for name, lesion in (("without_lesion", False), ("with_lesion", True)):
        scenes = [generate_one(i, seed, tuple(domains), size=max(size, 32), lesion=lesion) for i in range(n)]
        calibrated = image_probabilities(model, [s.image for s in scenes], temperature)
        raw = image_probabilities(model, [s.image for s in scenes], 1.0)
        top = calibrated.argmax(1)
        truth = np.array([model.classes.index(s.case.dx) if s.case.dx in model.classes else -1 for s in scenes])
        domain = np.array([s.case.domain for s in scenes])
        rows[name] = {
            "mean_top_probability": float(calibrated.max(1).mean()),
            "mean_top_probability_uncalibrated": float(raw.max(1).mean()),
            "share_over_0.5": float((calibrated.max(1) > 0.5).mean()),
            "predicted": {model.classes[k]: v / n for k, v in sorted(Counter(top.tolist()).items())},
            "accuracy": float((top == truth).mean()),
            "by_domain": {d: float(calibrated[domain == d].max(1).mean()) for d in sorted(set(domain.tolist()))},
        }
    return {"n": n, "seed": seed, "temperature": temperature, "chance": 1 / len(model.classes), **rows}
