"""The training objective of paper 000, as pure functions: cross-entropy per modality, cosine, L1 and label-aware
NT-Xent between paired image and note vectors; `total_loss` weighs them by LossConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from mmcore.config import LossConfig
from mmcore.heads import MultimodalOutput


@dataclass
class LossBreakdown:
    """The weighted total and every unweighted term; a skipped term (absent modality, zero weight) is 0."""

    total: torch.Tensor
    ce_image: torch.Tensor
    ce_text: torch.Tensor
    ce_fused: torch.Tensor
    cosine: torch.Tensor
    l1: torch.Tensor
    ntxent: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        """Plain floats, for logs and metrics lines."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) class indices."""
    return F.cross_entropy(logits, labels)


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(a_i, b_i) over paired rows of (B, D): 0 when every pair points the same way."""
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


def l1_loss(a_embeds: torch.Tensor, b_embeds: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between paired L2-normalised embeddings (B, D)."""
    return F.l1_loss(a_embeds, b_embeds)


def label_aware_ntxent(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Symmetric cross-modal NT-Xent where only pairs of another class are negatives (paper 000's code).

    For image i the positive is its own note i; the negatives are the notes j whose class differs from i's.
    Notes of the same class (j != i) are left out of the denominator rather than pushed away: a same-class note
    is not a wrong answer. Text -> image is the same with the roles swapped; the loss is the mean of both.
    With no negative in the batch a row's loss is 0 (-log 1).
    """
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = image_embeds @ text_embeds.T / temperature  # (B, B): row i = image i against every note
    same_class = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B)
    paired = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    excluded = same_class & ~paired  # same class, not the pair: neither positive nor negative
    logits = logits.masked_fill(excluded, float("-inf"))  # symmetric mask, so logits.T is masked too
    targets = torch.arange(len(labels), device=labels.device)
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.T, targets)
    return (image_to_text + text_to_image) / 2


def total_loss(out: MultimodalOutput, labels: torch.Tensor, cfg: LossConfig) -> LossBreakdown:
    """CE(image) + CE(text) + cosine + L1 + NT-Xent, weighted by `cfg`; a term whose modality is absent is skipped.

    A learned fusion (gated, concat_mlp) has parameters only the fused logits reach, so it also gets a CE term
    (weight `cfg.ce_fused` when LossConfig has one, else 1); the mean fusion does not, as in the paper.
    """
    anchor = next(t for t in (out.image_logits, out.text_logits, out.fused_logits) if t is not None)
    zero = anchor.new_zeros(())
    terms = {name: zero for name in ("ce_image", "ce_text", "ce_fused", "cosine", "l1", "ntxent")}
    weights = {
        "ce_image": cfg.ce_image,
        "ce_text": cfg.ce_text,
        "ce_fused": float(cfg.ce_fused),
        "cosine": cfg.cosine,
        "l1": cfg.l1,
        "ntxent": cfg.ntxent,
    }
    if out.image_logits is not None and weights["ce_image"]:
        terms["ce_image"] = cross_entropy(out.image_logits, labels)
    if out.text_logits is not None and weights["ce_text"]:
        terms["ce_text"] = cross_entropy(out.text_logits, labels)
    if out.learned_fusion and out.fused_logits is not None and weights["ce_fused"]:
        terms["ce_fused"] = cross_entropy(out.fused_logits, labels)
    if out.image_shared is not None and out.text_shared is not None:
        if weights["cosine"]:
            terms["cosine"] = cosine_loss(out.image_shared, out.text_shared)
        if weights["l1"]:
            terms["l1"] = l1_loss(out.image_embeds, out.text_embeds)
        if weights["ntxent"]:
            terms["ntxent"] = label_aware_ntxent(out.image_embeds, out.text_embeds, labels, cfg.temperature)
    total = sum((weights[name] * term for name, term in terms.items()), zero)
    return LossBreakdown(total=total, **terms)
