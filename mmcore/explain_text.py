"""Note attributions (DESIGN section 6): Layer Integrated Gradients on the token embeddings, merged back into words,
and the encoder's attention per layer and head with its rollout (Abnar & Zuidema, 2020).

Token ids are attributed at the embedding layer (as Captum does for BERT); special and padding tokens are kept in
the input but never scored, so word attributions cover what the clinician wrote and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients

from mmcore.explain_image import explaining
from mmcore.model import MultimodalModel
from mmcore.text_encoders import HFTextEncoder, TextEncoder

TextForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, T) ids, (B, T) mask -> (B, C) logits
_SPECIAL = ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "<s>", "</s>", "<pad>", "<mask>", "<cls>", "<sep>")


@dataclass
class TokenAttribution:
    """One note's attribution.

    tokens: the sequence as the encoder read it, specials included (aligned with attention maps).
    scores: (T,) signed attribution per token; 0 at special and padding tokens.
    real: (T,) True at the tokens of the note itself.
    words: [(word, score)] word pieces merged (scores summed), real tokens only, scaled to max |score| = 1.
    delta: Integrated Gradients' completeness error (sum of scores minus the change in the logit).
    """

    tokens: list[str]
    scores: np.ndarray
    real: np.ndarray
    words: list[tuple[str, float]]
    delta: float


def text_forward(model: MultimodalModel, image_features: torch.Tensor | None = None) -> TextForward:
    """Token ids -> the note-only logits, or the fused logits beside one fixed image (its (1, F) features)."""

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = model.text_encoder(input_ids, attention_mask).pooled  # (B, F_txt)
        if image_features is None:
            return model.forward_features(text_features=features).text_logits  # (B, C)
        return model.forward_features(image_features.expand(len(features), -1), features).fused_logits  # (B, C)

    return forward


def special_token_ids(tower: TextEncoder) -> set[int]:
    """Ids of the tokenizer's structural tokens ([CLS], [SEP], [PAD], [MASK]); [UNK] stands for a real word."""
    tokenizer = tower.tokenizer
    ids = {i for t in _SPECIAL if (i := tokenizer.token_to_id(t)) is not None}
    if tokenizer.padding:
        ids.add(int(tokenizer.padding["pad_id"]))
    return ids


def pad_id(tower: TextEncoder) -> int:
    """The padding id: the reference token of Integrated Gradients."""
    return int(tower.tokenizer.padding["pad_id"]) if tower.tokenizer.padding else 0


def baseline_ids(input_ids: torch.Tensor, specials: set[int], pad: int) -> torch.Tensor:
    """The reference sequence: every real token replaced by [PAD], the structural tokens ([CLS], [SEP]) kept."""
    keep = torch.isin(input_ids, torch.tensor(sorted(specials), device=input_ids.device))
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad))


def merge_word_pieces(tokens: list[str], scores: np.ndarray, real: np.ndarray) -> list[tuple[str, float]]:
    """Word pieces back into words ("mel", "##ano", "##ma" -> "melanoma"), scores summed; real tokens only."""
    words: list[tuple[str, float]] = []
    previous_real = False
    for token, score, keep in zip(tokens, scores.tolist(), real.tolist(), strict=True):
        if not keep:
            previous_real = False
            continue
        if token.startswith("##") and previous_real and words:
            word, total = words[-1]
            words[-1] = (word + token[2:], total + score)
        else:
            words.append((token.removeprefix("##"), score))
        previous_real = True
    return words


def scaled(words: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Scores divided by the largest |score| (signs kept), so a page can colour them on [-1, 1]."""
    top = max((abs(s) for _, s in words), default=0.0)
    return [(w, s / top if top > 0 else 0.0) for w, s in words]


def integrated_gradients_text(
    model: MultimodalModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target: int | None = None,
    image_features: torch.Tensor | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
) -> TokenAttribution:
    """Layer Integrated Gradients of the class `target` (None: the top class) over the token embeddings.

    One note: input_ids and attention_mask are (1, T). The path runs from the [PAD]-with-[CLS]/[SEP] reference
    to the note in `n_steps`, evaluated `internal_batch_size` at a time.
    """
    if input_ids.dim() != 2 or len(input_ids) != 1:
        raise ValueError(f"explain one note at a time: input_ids must be (1, T), got {tuple(input_ids.shape)}")
    tower = model.text_encoder
    with explaining(model):
        input_ids, attention_mask = input_ids.detach().clone(), attention_mask.detach().clone()
        features = None if image_features is None else image_features.detach().clone()
        forward = text_forward(model, features)
        if target is None:
            with torch.no_grad():
                target = int(forward(input_ids, attention_mask).argmax(-1))
        specials = special_token_ids(tower)
        reference = baseline_ids(input_ids, specials, pad_id(tower))
        lig = LayerIntegratedGradients(forward, tower.token_embeddings)
        attr, delta = lig.attribute(
            input_ids,
            baselines=reference,
            target=target,
            additional_forward_args=(attention_mask,),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )  # (1, T, E)
    ids = input_ids[0].cpu()
    real = ((attention_mask[0].cpu() > 0) & ~torch.isin(ids, torch.tensor(sorted(specials)))).numpy()
    scores = attr[0].sum(-1).detach().cpu().numpy().astype(np.float32)  # (T,)
    scores[~real] = 0.0
    tokens = tower.convert_ids_to_tokens(ids)
    return TokenAttribution(tokens, scores, real, scaled(merge_word_pieces(tokens, scores, real)), float(delta))


def attention_maps(model: MultimodalModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """One note's attention weights as a (L, heads, T, T) array over its real length (BiLSTM: (1, 1, 1, T)).

    Row t of a BERT map is what token t attends to. The call switches the encoder to eager attention, which
    mutates the shared model, so it runs under the model's explanation lock.
    """
    length = int(attention_mask[0].sum())
    with explaining(model), torch.no_grad():
        out = model.text_encoder(input_ids[:, :length], attention_mask[:, :length], output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()  # (L, heads, T, T)


def attention_rollout(attentions: np.ndarray, residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): per layer the head-averaged map, plus the identity for the
    residual stream (0.5 A + 0.5 I, rows renormalised), multiplied from the first layer up. (L, H, T, T) -> (T, T).
    """
    if attentions.ndim != 4 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"rollout needs (L, heads, T, T) attention maps, got {attentions.shape}")
    T = attentions.shape[-1]
    rollout = np.eye(T, dtype=np.float64)
    for layer in attentions.astype(np.float64):
        a = layer.mean(0)  # (T, T) averaged over heads
        if residual:
            a = 0.5 * a + 0.5 * np.eye(T)
        a = a / a.sum(-1, keepdims=True)
        rollout = a @ rollout
    return rollout.astype(np.float32)


def pooled_relevance(tower: TextEncoder, attentions: np.ndarray) -> np.ndarray:
    """(T,) how much the pooled note vector draws on each token, summing to 1.

    BERT family: the rollout row(s) the pooling reads: the mean over all rows for mean pooling (MiniLM), the
    [CLS] row for [CLS]/pooler pooling. BiLSTM: its attention weights are the pooling weights themselves.
    """
    if attentions.shape[-2] == 1:  # one query: BiLSTM attention pooling
        weights = attentions[-1, 0, 0]
    else:
        rollout = attention_rollout(attentions)
        mean_pooled = isinstance(tower, HFTextEncoder) and tower.pooling == "mean"
        weights = rollout.mean(0) if mean_pooled else rollout[0]
    return (weights / max(float(weights.sum()), 1e-12)).astype(np.float32)
