"""MultimodalModel: an image tower and a text tower under the shared heads; `build_model` makes it from config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from mmcore.config import ModelConfig
from mmcore.devices import resolve_device
from mmcore.heads import FUSIONS, MultimodalHeads, MultimodalOutput
from mmcore.image_encoders import IMAGE_ENCODERS, ImageEncoder, ImageSpec, build_image_encoder, image_transform
from mmcore.text_encoders import TEXT_ENCODERS, TextEncoder, build_text_encoder

__all__ = [
    "FUSIONS",
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "MultimodalModel",
    "MultimodalOutput",
    "build_model",
    "resolve_device",
]


class MultimodalModel(nn.Module):
    """Image and/or note -> per-modality and fused logits (B, C) and normalised shared embeddings (B, D)."""

    def __init__(
        self, cfg: ModelConfig, classes: Sequence[str], image_encoder: ImageEncoder, text_encoder: TextEncoder
    ) -> None:
        super().__init__()
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be at least two distinct names, got {list(classes)}")
        self.cfg = cfg  # the checkpoint carries its config (nanoGPT)
        self.classes = tuple(classes)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.heads = MultimodalHeads(
            image_encoder.feature_dim, text_encoder.feature_dim, cfg.embed_dim, len(classes), cfg.fusion, cfg.dropout
        )
        self.backbones_frozen = False

    @property
    def image_spec(self) -> ImageSpec:
        """Image size and normalisation the image tower expects."""
        return self.image_encoder.spec

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D) L2-normalised shared embeddings."""
        return self.forward(images=images).image_embeds

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and mask -> (B, D) L2-normalised shared embeddings."""
        return self.forward(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> MultimodalOutput:
        """Either modality or both; the absent one's fields are None."""
        if images is None and input_ids is None:
            raise ValueError("give images, input_ids, or both")
        image_features = self.image_encoder(images) if images is not None else None  # (B, F_img)
        text_features = None
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_features = self.text_encoder(input_ids, attention_mask).pooled  # (B, F_txt)
        return self.heads(image_features, text_features)

    def forward_features(
        self, image_features: torch.Tensor | None = None, text_features: torch.Tensor | None = None
    ) -> MultimodalOutput:
        """The heads alone, on encoder features cached once (the frozen-backbone mode)."""
        if image_features is None and text_features is None:
            raise ValueError("give image_features, text_features, or both")
        return self.heads(image_features, text_features)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Notes -> {input_ids (B, T), attention_mask (B, T)} with the configured max_text_length."""
        return self.text_encoder.tokenize(texts, self.cfg.max_text_length)

    def image_transform(self, train: bool = False) -> v2.Transform:
        """PIL image or uint8 (3, H, W) tensor -> float (3, S, S) normalised for the image tower."""
        return image_transform(self.image_spec, train)

    def freeze_backbones(self) -> None:
        """Stop training both towers (no gradients, eval-mode BatchNorm/dropout): only the heads learn."""
        self.backbones_frozen = True
        for tower in (self.image_encoder, self.text_encoder):
            tower.requires_grad_(False)
            tower.eval()

    def train(self, mode: bool = True) -> MultimodalModel:
        super().train(mode)
        if self.backbones_frozen:  # frozen towers stay in eval mode, so cached features stay valid
            self.image_encoder.eval()
            self.text_encoder.eval()
        return self


def build_model(
    cfg: ModelConfig,
    classes: Sequence[str],
    *,
    pretrained: bool | None = None,
    assets: Path | None = None,
    texts: Sequence[str] | None = None,
) -> MultimodalModel:
    """The model named by `cfg`.

    pretrained: None follows cfg.pretrained; False builds architectures only (what loading a saved version does).
    assets: a saved version's folder, from which the text tower rebuilds its tokenizer and architecture.
    texts: the training notes, for a text tower that learns its vocabulary (bilstm_attn).
    """
    if pretrained is None:
        pretrained = cfg.pretrained and assets is None
    image_encoder = build_image_encoder(cfg, pretrained=pretrained)
    text_encoder = build_text_encoder(cfg, pretrained=pretrained, assets=assets, texts=texts)
    return MultimodalModel(cfg, classes, image_encoder, text_encoder)
