"""Losses, each on its defining property; total_loss weighting and skipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmcore.config import LossConfig
from mmcore.heads import MultimodalOutput
from mmcore.losses import cosine_loss, cross_entropy, l1_loss, label_aware_ntxent, total_loss


def test_cross_entropy_is_torch_cross_entropy():
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_cosine_loss_is_zero_for_parallel_vectors_and_grows_with_the_angle():
    a = torch.randn(5, 8)
    assert cosine_loss(a, a).abs() < 1e-6
    assert cosine_loss(a, 3 * a).abs() < 1e-6  # scale does not matter
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert cosine_loss(x, y).item() == pytest.approx(1.0)
    assert cosine_loss(x, -x).item() == pytest.approx(2.0)


def test_l1_loss_is_the_mean_absolute_difference():
    a = F.normalize(torch.randn(4, 6), dim=-1)
    assert l1_loss(a, a) == 0
    b = torch.zeros(4, 6)
    torch.testing.assert_close(l1_loss(a, b), a.abs().mean())


def _reference_ntxent(img, txt, labels, t):
    """The definition, one anchor at a time."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    total = 0.0
    for a, b in ((img, txt), (txt, img)):
        for i in range(len(labels)):
            pos = math.exp(float(a[i] @ b[i]) / t)
            neg = sum(math.exp(float(a[i] @ b[j]) / t) for j in range(len(labels)) if labels[j] != labels[i])
            total += -math.log(pos / (pos + neg))
    return total / (2 * len(labels))


def test_ntxent_matches_its_definition():
    torch.manual_seed(0)
    img, txt, labels = torch.randn(6, 5), torch.randn(6, 5), torch.tensor([0, 0, 1, 2, 2, 2])
    loss = label_aware_ntxent(img, txt, labels, temperature=0.5)
    assert loss.item() == pytest.approx(_reference_ntxent(img, txt, labels, 0.5), rel=1e-5)


def test_ntxent_ignores_same_class_items_that_are_not_the_pair():
    # Orthonormal a, b, c. Pairs 0 and 1 are class 0, pair 2 is class 1. Item 1 (image and note, kept identical)
    # turns in the a-b plane: only its similarity to item 0, of the same class, changes.
    a, b, c = torch.eye(3)
    labels = torch.tensor([0, 0, 1])
    losses, plain = [], []
    for angle in (0.3, 1.0, 1.5):
        u = math.cos(angle) * a + math.sin(angle) * b
        img = torch.stack([a, u, c])
        txt = img.clone()
        losses.append(label_aware_ntxent(img, txt, labels).item())
        plain.append(label_aware_ntxent(img, txt, torch.tensor([0, 1, 2])).item())  # every item its own class
    assert max(losses) - min(losses) < 1e-6
    assert max(plain) - min(plain) > 1e-3  # without labels the same moves do change the loss


def test_ntxent_is_zero_when_the_batch_holds_one_class():
    img, txt = torch.randn(5, 4), torch.randn(5, 4)
    assert label_aware_ntxent(img, txt, torch.zeros(5, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)


def test_ntxent_is_lower_for_aligned_pairs_than_for_shuffled_ones():
    torch.manual_seed(0)
    img = torch.randn(8, 16)
    labels = torch.arange(8) % 4
    aligned = label_aware_ntxent(img, img + 0.05 * torch.randn(8, 16), labels)
    shuffled = label_aware_ntxent(img, img[torch.roll(torch.arange(8), 1)], labels)  # notes of other classes
    assert aligned < 0.1 < shuffled


def test_ntxent_is_symmetric_and_differentiable():
    img = torch.randn(6, 4, requires_grad=True)
    txt = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = label_aware_ntxent(img, txt, labels)
    torch.testing.assert_close(loss, label_aware_ntxent(txt, img, labels))
    loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


def _output(image: bool = True, text: bool = True, learned_fusion: bool = False) -> MultimodalOutput:
    torch.manual_seed(0)
    out = MultimodalOutput(learned_fusion=learned_fusion)
    if image:
        out.image_logits, out.image_shared = torch.randn(6, 3), torch.randn(6, 8)
        out.image_embeds = F.normalize(out.image_shared, dim=-1)
    if text:
        out.text_logits, out.text_shared = torch.randn(6, 3), torch.randn(6, 8)
        out.text_embeds = F.normalize(out.text_shared, dim=-1)
    out.fused_logits = out.image_logits if not text else out.text_logits if not image else torch.randn(6, 3)
    return out


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def test_total_loss_weighs_every_term_as_configured():
    out = _output()
    parts = total_loss(out, LABELS, LossConfig())
    expected = parts.ce_image + parts.ce_text + parts.cosine + parts.l1 + 0.5 * parts.ntxent
    torch.testing.assert_close(parts.total, expected)
    assert parts.ce_fused == 0  # mean fusion: no fused term, as in the paper
    torch.testing.assert_close(parts.ntxent, label_aware_ntxent(out.image_embeds, out.text_embeds, LABELS, 0.07))
    only_l1 = LossConfig(ce_image=0, ce_text=0, cosine=0, l1=2.0, ntxent=0)
    torch.testing.assert_close(total_loss(out, LABELS, only_l1).total, 2.0 * parts.l1)
    assert set(parts.to_dict()) == {"total", "ce_image", "ce_text", "ce_fused", "cosine", "l1", "ntxent"}


def test_total_loss_skips_terms_of_an_absent_modality():
    out = _output(text=False)
    parts = total_loss(out, LABELS, LossConfig())
    assert parts.ce_text == parts.cosine == parts.l1 == parts.ntxent == 0
    torch.testing.assert_close(parts.total, F.cross_entropy(out.image_logits, LABELS))


def test_a_learned_fusion_gets_its_own_cross_entropy():
    out = _output(learned_fusion=True)
    parts = total_loss(out, LABELS, LossConfig())
    torch.testing.assert_close(parts.ce_fused, F.cross_entropy(out.fused_logits, LABELS))
    assert parts.total > total_loss(_output(), LABELS, LossConfig()).total
