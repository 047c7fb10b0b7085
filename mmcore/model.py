"""MultimodalModel: an image tower and a text tower under the shared heads; `build_model` makes it from config.
`PartialModel`: what trains in partial fine-tuning, the towers' tops and the heads on cached trunk activations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
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
    "PartialModel",
    "PartialOutput",
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
        self.frozen_parts: list[nn.Module] = []  # stay in eval mode whatever train() says (cached outputs stay valid)

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
        self.frozen_parts = [self.image_encoder, self.text_encoder]
        self.train(self.training)

    def split_towers(self, image_blocks: int, text_layers: int) -> tuple[nn.Module, nn.Module, PartialModel]:
        """Freeze each tower's trunk and return (image trunk, text trunk, the PartialModel that trains).

        The last `image_blocks` image blocks (with the head after them) and the last `text_layers` text layers
        train, with the heads. text_layers = 0 freezes the whole text tower: its trunk is then the tower itself and
        the PartialModel reads its pooled features. Frozen parts stay in eval mode, so their cached outputs stay
        valid; every module is the model's own, so training the PartialModel trains this model.
        """
        image_trunk, image_top = self.image_encoder.split_trunk(image_blocks)
        text_trunk, text_top = self.text_encoder.split_trunk(text_layers) if text_layers else (self.text_encoder, None)
        self.image_encoder.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        for top in (image_top, text_top):
            if top is not None:
                top.requires_grad_(True)
        self.frozen_parts = [image_trunk, text_trunk]
        self.train(self.training)
        return image_trunk, text_trunk, PartialModel(image_top, text_top, self.heads)

    def train(self, mode: bool = True) -> MultimodalModel:
        super().train(mode)
        for part in self.frozen_parts:
            part.eval()
        return self


@dataclass
class PartialOutput(MultimodalOutput):
    """MultimodalOutput, plus the image logits (K, C) of the outlier images of the batch (outlier exposure)."""

    outlier_logits: torch.Tensor | None = None


class PartialModel(nn.Module):
    """The towers' tops and the heads: cached trunk activations -> MultimodalOutput (partial fine-tuning).

    Its state dict is what a partial run learns and checkpoints: image_top.*, text_top.* (when text layers train)
    and heads.*, the MultimodalModel's own modules.
    """

    def __init__(self, image_top: nn.Module, text_top: nn.Module | None, heads: MultimodalHeads) -> None:
        super().__init__()
        self.image_top = image_top
        self.text_top = text_top
        self.heads = heads

    def forward(
        self,
        image_acts: torch.Tensor | None = None,
        text_acts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        outlier_acts: torch.Tensor | None = None,
    ) -> PartialOutput:
        """image_acts (B, C, h, w): the image trunk's output. The text side is either text_acts (B, T, H) with its
        attention_mask (B, T), the text trunk's output, or text_features (B, F_txt) of a frozen text tower.
        outlier_acts (K, C, h, w): trunk outputs of outlier images (lesion removed), run through the image top in the
        same pass as image_acts (one set of BatchNorm statistics, as Hendrycks et al. concatenate their batches)."""
        image_features = None
        outlier_features = None
        if image_acts is not None:
            acts = image_acts if outlier_acts is None else torch.cat([image_acts, outlier_acts])
            features = self.image_top(acts)  # (B [+ K], F_img)
            image_features, outlier_features = features[: len(image_acts)], features[len(image_acts) :]
        if text_acts is not None:
            text_features = self.text_top(text_acts, attention_mask)  # (B, F_txt)
        out = self.heads(image_features, text_features)
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        outlier_logits = None
        if outlier_acts is not None and image_features is not None:
            outlier_logits = self.heads(image_features=outlier_features).image_logits  # (K, C)
        return PartialOutput(**fields, outlier_logits=outlier_logits)


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
