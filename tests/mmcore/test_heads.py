"""Heads: projections, the shared layer and common classifier, fusion variants, unimodal outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcore.heads import FUSIONS, MultimodalHeads

B, F_IMG, F_TXT, D, C = 4, 12, 10, 8, 5


def _heads(fusion: str = "mean") -> MultimodalHeads:
    torch.manual_seed(0)
    return MultimodalHeads(F_IMG, F_TXT, D, C, fusion, dropout=0.0).eval()


def test_registry_holds_the_three_fusions():
    assert FUSIONS.names() == ["concat_mlp", "gated", "mean"]
    for name in FUSIONS.names():
        assert FUSIONS.get(name).__name__ == name


@pytest.mark.parametrize("fusion", ["mean", "gated", "concat_mlp"])
def test_fusion_variants_give_the_right_shapes(fusion):
    out = _heads(fusion)(torch.randn(B, F_IMG), torch.randn(B, F_TXT))
    for logits in (out.image_logits, out.text_logits, out.fused_logits):
        assert logits.shape == (B, C)
    for vectors in (out.image_embeds, out.text_embeds, out.image_shared, out.text_shared):
        assert vectors.shape == (B, D)
    assert out.learned_fusion is (fusion != "mean")
    assert out.logits is out.fused_logits


def test_mean_fusion_is_the_mean_of_the_logits():
    out = _heads("mean")(torch.randn(B, F_IMG), torch.randn(B, F_TXT))
    torch.testing.assert_close(out.fused_logits, (out.image_logits + out.text_logits) / 2)


def test_gated_fusion_mixes_the_two_shared_vectors_under_the_common_classifier():
    heads = _heads("gated")
    features = torch.randn(B, F_IMG), torch.randn(B, F_TXT)
    with torch.no_grad():  # a gate forced open or shut gives exactly one modality's logits
        heads.fusion.gate.weight.zero_()
        heads.fusion.gate.bias.fill_(100.0)
        out = heads(*features)
        torch.testing.assert_close(out.fused_logits, out.image_logits)
        heads.fusion.gate.bias.fill_(-100.0)
        out = heads(*features)
        torch.testing.assert_close(out.fused_logits, out.text_logits)


@pytest.mark.parametrize("fusion", ["mean", "gated", "concat_mlp"])
def test_one_modality_alone_predicts_with_its_own_logits(fusion):
    heads = _heads(fusion)
    image_only = heads(image_features=torch.randn(B, F_IMG))
    assert image_only.text_logits is None and image_only.text_embeds is None
    assert image_only.fused_logits is image_only.image_logits and not image_only.learned_fusion
    text_only = heads(text_features=torch.randn(B, F_TXT))
    assert text_only.image_logits is None and text_only.fused_logits is text_only.text_logits


def test_embeds_are_the_normalised_shared_vectors():
    out = _heads()(torch.randn(B, F_IMG), torch.randn(B, F_TXT))
    torch.testing.assert_close(out.image_embeds, F.normalize(out.image_shared, dim=-1))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(B))


def test_only_the_shared_layer_and_classifier_serve_both_modalities():
    heads = _heads("mean")
    calls: dict[str, int] = {}
    for name, module in heads.named_modules():
        if name:
            module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    heads(torch.randn(B, F_IMG), torch.randn(B, F_TXT))
    assert calls.pop("shared") == 2 and calls.pop("classifier") == 2
    assert set(calls.values()) == {1}  # every other module runs once


def test_both_modalities_share_one_classifier():
    heads = _heads()
    vector = torch.randn(B, F_IMG)
    out = heads(image_features=vector)
    torch.testing.assert_close(out.image_logits, heads.classifier(out.image_shared))
