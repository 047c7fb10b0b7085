"""MultimodalModel on tiny towers: overfit one batch, unimodal forward, cached-feature heads, transforms, devices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore.cases import DX_CLASSES
from mmcore.config import LossConfig, load_config
from mmcore.devices import resolve_device
from mmcore.losses import total_loss
from mmcore.model import MultimodalModel, build_model

TINY = load_config("tiny", env={}).model
NOTES = [
    "asymmetric pigmented lesion with blue-grey veil",
    "symmetric brown macule with regular network",
    "pink nodule with arborizing vessels",
    "firm papule with central white scar",
    "scaly red patch on the scalp",
    "waxy brown plaque with milia-like cysts",
    "red lacunae on the trunk",
    "pigmented lesion with irregular streaks",
]


def _model(**changes) -> MultimodalModel:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(TINY, **changes), DX_CLASSES)


def _batch(model: MultimodalModel) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(1)
    images = torch.randn(len(NOTES), 3, TINY.image_size, TINY.image_size)  # (B, 3, H, W)
    labels = torch.tensor([4, 5, 1, 3, 0, 2, 6, 4])
    return images, model.tokenize(NOTES), labels


@pytest.mark.parametrize("fusion", ["mean", "gated"])
def test_a_tiny_model_overfits_one_batch(fusion):
    """nanoGPT's first sanity check: the whole objective falls to near zero on one batch."""
    model = _model(fusion=fusion).train()
    images, text, labels = _batch(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss = total_loss(model(images, **text), labels, LossConfig()).total
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 < first / 20
    model.eval()
    with torch.no_grad():
        out = model(images, **text)
    assert (out.image_logits.argmax(-1) == labels).all() and (out.text_logits.argmax(-1) == labels).all()


def test_either_modality_alone_gives_a_prediction():
    model = _model().eval()
    images, text, _ = _batch(model)
    image_only = model(images=images)
    text_only = model(**text)
    assert image_only.fused_logits.shape == text_only.fused_logits.shape == (len(NOTES), len(DX_CLASSES))
    assert image_only.text_logits is None and text_only.image_logits is None
    both = model(images, **text)
    torch.testing.assert_close(both.image_logits, image_only.image_logits)
    torch.testing.assert_close(both.text_logits, text_only.text_logits)
    with pytest.raises(ValueError):
        model()


def test_encoders_give_unit_embeddings_and_forward_features_matches_forward():
    model = _model().eval()
    images, text, _ = _batch(model)
    with torch.no_grad():
        image_embeds = model.encode_image(images)
        text_embeds = model.encode_text(text["input_ids"], text["attention_mask"])
        full = model(images, **text)
        cached = model.forward_features(
            image_features=model.image_encoder(images),
            text_features=model.text_encoder(text["input_ids"], text["attention_mask"]).pooled,
        )
    assert image_embeds.shape == text_embeds.shape == (len(NOTES), TINY.embed_dim)
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(len(NOTES)))
    torch.testing.assert_close(image_embeds, full.image_embeds)
    torch.testing.assert_close(cached.fused_logits, full.fused_logits)
    torch.testing.assert_close(cached.text_embeds, text_embeds)


def test_tokenize_uses_the_configured_max_length():
    model = _model()
    ids = model.tokenize(["lesion " * 100])["input_ids"]
    assert ids.shape == (1, TINY.max_text_length)


def test_image_transform_resizes_and_normalises_with_the_towers_statistics():
    model = _model()
    photo = Image.fromarray(np.full((45, 60, 3), 255, dtype=np.uint8))  # white, not square
    x = model.image_transform(train=False)(photo)
    assert x.shape == (3, TINY.image_size, TINY.image_size) and x.dtype == torch.float32
    expected = (1 - torch.tensor(model.image_spec.mean)) / torch.tensor(model.image_spec.std)
    torch.testing.assert_close(x[:, 16, 16], expected)
    augmented = model.image_transform(train=True)(torch.zeros(3, 50, 70, dtype=torch.uint8))
    assert augmented.shape == (3, TINY.image_size, TINY.image_size)


def test_frozen_backbones_stay_frozen_and_in_eval_mode():
    model = _model()
    model.freeze_backbones()
    model.train()
    assert not model.image_encoder.training and not model.text_encoder.training
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert model.heads.training and all(p.requires_grad for p in model.heads.parameters())


def test_model_carries_its_classes_and_config():
    model = _model()
    assert model.classes == DX_CLASSES and model.cfg.image_encoder == "tiny_cnn"
    with pytest.raises(ValueError):
        build_model(TINY, ["nv"])


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_split_towers_freezes_the_trunks_and_trains_the_tops_of_the_same_model():
    model = _model()
    image_trunk, text_trunk, partial = model.split_towers(1, 1)
    model.train()
    assert not image_trunk.training and not text_trunk.training and partial.image_top.training
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in partial.parameters()}  # the tops and the heads, nothing else
    assert not any(p.requires_grad for p in image_trunk.parameters())
    images, tokens, labels = _batch(model)
    model.eval()
    with torch.no_grad():
        acts = image_trunk(images)  # (B, 16, 8, 8): the input of tiny_cnn's last block
        states = text_trunk(tokens["input_ids"], tokens["attention_mask"])
        whole = model(images, **tokens)
        parts = partial(image_acts=acts, text_acts=states, attention_mask=tokens["attention_mask"])
    assert torch.equal(parts.fused_logits, whole.fused_logits) and torch.equal(parts.image_embeds, whole.image_embeds)
    names = {k.split(".")[0] for k in partial.state_dict()}
    assert names == {"image_top", "text_top", "heads"}


def test_split_towers_without_text_layers_reads_pooled_text_features():
    model = _model()
    image_trunk, text_trunk, partial = model.split_towers(0, 0)
    assert text_trunk is model.text_encoder and partial.text_top is None
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    images, tokens, _ = _batch(model)
    model.eval()
    with torch.no_grad():
        pooled = model.text_encoder(**tokens).pooled
        out = partial(image_acts=image_trunk(images), text_features=pooled)
        torch.testing.assert_close(out.fused_logits, model(images, **tokens).fused_logits, atol=0, rtol=0)
