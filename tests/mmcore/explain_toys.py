"""The toy tasks the explanation tests train on: a striped square whose stripes give the class (so image maps must
point at it) and notes whose one keyword gives the class (so word attributions must find it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from mmcore.cases import DX_CLASSES
from mmcore.config import load_config
from mmcore.model import MultimodalModel, build_model

TINY = load_config("tiny", env={}).model
S, SQ = 64, 16  # image side and the striped square's side
MEL, NV, BKL = DX_CLASSES.index("mel"), DX_CLASSES.index("nv"), DX_CLASSES.index("bkl")
KEYWORDS = {MEL: "melanoma", NV: "nevus"}
FILLER = ["lesion", "on", "the", "back", "of", "a", "patient", "with", "new", "brown", "patch", "skin", "history"]


def striped_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (n, 3, S, S) normalised, masks (n, S, S), labels): grey noise with one striped square at a random
    place; horizontal stripes are mel, vertical ones nv. The class lives in the square and nowhere else."""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.05 * torch.randn(n, 3, S, S, generator=g)
    masks = torch.zeros(n, S, S, dtype=torch.bool)
    labels = torch.randint(0, 2, (n,), generator=g)
    stripes = (torch.arange(SQ) // 2 % 2).float()  # (SQ,) 2-px stripes
    for i in range(n):
        y, x = torch.randint(0, S - SQ, (2,), generator=g).tolist()
        pattern = stripes.view(SQ, 1) if labels[i] == 0 else stripes.view(1, SQ)
        images[i, :, y : y + SQ, x : x + SQ] = 0.2 + 0.6 * pattern.expand(SQ, SQ)
        masks[i, y : y + SQ, x : x + SQ] = True
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    images = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return images, masks, torch.where(labels == 0, MEL, NV)


def keyword_notes(n: int, seed: int, neutral: bool = True) -> tuple[list[str], torch.Tensor]:
    """Notes of filler words; "melanoma" makes one mel, "nevus" nv, and no keyword bkl (so that the class of an
    empty note is neither: the [PAD] reference of Integrated Gradients then has nothing to say for mel or nv)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([MEL, NV, BKL] if neutral else [MEL, NV], size=n)
    notes = []
    for label in labels:
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 8))))
        if int(label) in KEYWORDS:
            words.insert(int(rng.integers(0, len(words) + 1)), KEYWORDS[int(label)])
        notes.append(" ".join(words))
    return notes, torch.as_tensor(labels)


def toy_model(seed: int = 0) -> MultimodalModel:
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(TINY, image_size=S), DX_CLASSES)


def train_toy(steps: int = 60, batch: int = 24) -> MultimodalModel:
    """The tiny model after a few Adam steps on both toy tasks (about a second on two idle cores)."""
    model = toy_model(0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        images, _, image_labels = striped_squares(batch, step)
        notes, text_labels = keyword_notes(batch, step)
        out = model(images, **model.tokenize(notes))
        loss = F.cross_entropy(out.image_logits, image_labels) + F.cross_entropy(out.text_logits, text_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Spearman correlation of paired maps; a constant map correlates 0 with anything."""
    values = []
    for x, y in zip(a, b, strict=True):
        values.append(0.0 if x.std() == 0 or y.std() == 0 else spearmanr(x.ravel(), y.ravel())[0])
    return float(np.mean(values))
