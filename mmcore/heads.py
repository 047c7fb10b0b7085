"""The heads on top of the encoders (DESIGN section 5): per-modality projections, one shared layer, one common
classifier, and the fusion of the two modalities (registry FUSIONS: mean, gated, concat_mlp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.registry import Registry


@dataclass
class MultimodalOutput:
    """What the model returns; a field is None where its modality was not given.

    image_logits, text_logits: (B, C) from the common classifier.
    fused_logits: (B, C) the fusion of both; with one modality it is that modality's logits.
    image_embeds, text_embeds: (B, D) L2-normalised shared vectors: the retrieval embedding.
    image_shared, text_shared: (B, D) the same vectors unnormalised, for the alignment losses.
    learned_fusion: True when fused_logits came from a fusion with parameters (it then needs its own loss term).
    """

    image_logits: torch.Tensor | None = None
    text_logits: torch.Tensor | None = None
    fused_logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_shared: torch.Tensor | None = None
    text_shared: torch.Tensor | None = None
    learned_fusion: bool = False

    @property
    def logits(self) -> torch.Tensor:
        """The prediction: fused when both modalities are present, else the one present."""
        if self.fused_logits is None:
            raise ValueError("the model was given neither an image nor a note")
        return self.fused_logits


class Fusion(nn.Module):
    """Combines the two modalities: `forward(image_shared, text_shared, image_logits, text_logits, classifier)`."""

    learned = False

    def forward(
        self,
        image_shared: torch.Tensor,
        text_shared: torch.Tensor,
        image_logits: torch.Tensor,
        text_logits: torch.Tensor,
        classifier: nn.Module,
    ) -> torch.Tensor:
        raise NotImplementedError


FusionBuilder = Callable[[int, int, float], Fusion]
FUSIONS: Registry[FusionBuilder] = Registry("fusion")


class MeanFusion(Fusion):
    """Mean of the image and text logits (the paper's late fusion; no parameters)."""

    def forward(self, image_shared, text_shared, image_logits, text_logits, classifier) -> torch.Tensor:
        return (image_logits + text_logits) / 2  # (B, C)


class GatedFusion(Fusion):
    """A learned per-dimension gate mixing the two shared vectors, classified by the common classifier.

    After paper 002's gated attention fusion: g = sigmoid(W [z_img; z_txt]), z = g * z_img + (1 - g) * z_txt. The mix
    stays in the shared space, so the common classifier reads it.
    """

    learned = True

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * embed_dim, embed_dim)

    def forward(self, image_shared, text_shared, image_logits, text_logits, classifier) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([image_shared, text_shared], dim=-1)))  # (B, D)
        return classifier(g * image_shared + (1 - g) * text_shared)  # (B, C)


class ConcatMLPFusion(Fusion):
    """Concatenated shared vectors through a two-layer MLP to logits (its own classifier)."""

    learned = True

    def __init__(self, embed_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * embed_dim, embed_dim)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(embed_dim, num_classes)

    def forward(self, image_shared, text_shared, image_logits, text_logits, classifier) -> torch.Tensor:
        x = torch.cat([image_shared, text_shared], dim=-1)  # (B, 2D)
        return self.fc2(self.drop(self.act(self.fc1(x))))  # (B, C)


@FUSIONS.register()
def mean(embed_dim: int, num_classes: int, dropout: float) -> Fusion:
    """Mean of the image and text logits (default)."""
    return MeanFusion()


@FUSIONS.register()
def gated(embed_dim: int, num_classes: int, dropout: float) -> Fusion:
    """A learned gate over the two shared vectors, then the common classifier."""
    return GatedFusion(embed_dim)


@FUSIONS.register()
def concat_mlp(embed_dim: int, num_classes: int, dropout: float) -> Fusion:
    """Concatenated shared vectors -> MLP -> logits."""
    return ConcatMLPFusion(embed_dim, num_classes, dropout)


class Projection(nn.Module):
    """One modality's encoder features to the embedding width: Linear -> ReLU -> Dropout, (B, F) -> (B, D)."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_dim)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.fc(features)))


class MultimodalHeads(nn.Module):
    """Projections, the shared layer, the common classifier and the fusion, as in the paper's code.

    `shared` and `classifier` are called once per modality on purpose: one set of weights maps both modalities
    into one space with one decision boundary, which is what lets either modality predict alone and what makes
    image and note vectors comparable for cross-modal retrieval. Every other module runs once per forward.
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, num_classes: int, fusion: str, dropout: float
    ) -> None:
        super().__init__()
        self.image_proj = Projection(image_dim, embed_dim, dropout)
        self.text_proj = Projection(text_dim, embed_dim, dropout)
        self.shared = nn.Linear(embed_dim, embed_dim)
        self.image_drop = nn.Dropout(dropout)
        self.text_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.fusion = FUSIONS.get(fusion)(embed_dim, num_classes, dropout)

    def forward(
        self, image_features: torch.Tensor | None = None, text_features: torch.Tensor | None = None
    ) -> MultimodalOutput:
        out = MultimodalOutput()
        if image_features is not None:
            out.image_shared = self.shared(self.image_proj(image_features))  # (B, D)
            out.image_embeds = F.normalize(out.image_shared, dim=-1)  # (B, D)
            out.image_logits = self.classifier(self.image_drop(out.image_shared))  # (B, C)
        if text_features is not None:
            out.text_shared = self.shared(self.text_proj(text_features))  # (B, D)
            out.text_embeds = F.normalize(out.text_shared, dim=-1)  # (B, D)
            out.text_logits = self.classifier(self.text_drop(out.text_shared))  # (B, C)
        if out.image_logits is not None and out.text_logits is not None:
            out.fused_logits = self.fusion(
                out.image_shared, out.text_shared, out.image_logits, out.text_logits, self.classifier
            )
            out.learned_fusion = self.fusion.learned
        else:
            out.fused_logits = out.image_logits if out.image_logits is not None else out.text_logits
        return out
