"""Text attributions and attention on tiny models: word pieces merged into words, attributions over real tokens only,
Integrated Gradients finding the keyword that gives the class (and complete), rollout by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_toys import KEYWORDS, NV, keyword_notes, toy_model, train_toy

from mmcore.explain_text import (
    attention_maps,
    attention_rollout,
    integrated_gradients_text,
    merge_word_pieces,
    pooled_relevance,
)
from mmcore.model import MultimodalModel


@pytest.fixture(scope="module")
def trained() -> MultimodalModel:
    return train_toy()


def test_word_pieces_merge_into_words_and_specials_are_dropped():
    tokens = ["[CLS]", "mel", "##ano", "##ma", "on", "##x", "[SEP]", "[PAD]"]
    scores = np.array([9.0, 0.1, 0.2, 0.3, 1.0, 0.5, 9.0, 9.0], dtype=np.float32)
    real = np.array([False, True, True, True, True, True, False, False])
    words = merge_word_pieces(tokens, scores, real)
    assert [w for w, _ in words] == ["melanoma", "onx"]
    assert words[0][1] == pytest.approx(0.6) and words[1][1] == pytest.approx(1.5)


def test_token_attributions_cover_real_tokens_only(trained):
    tower = trained.text_encoder
    tokens = trained.tokenize(["nevus on the back zqx", "melanoma"])  # the second row is padded
    for row in range(2):
        ids, mask = tokens["input_ids"][row : row + 1], tokens["attention_mask"][row : row + 1]
        attribution = integrated_gradients_text(trained, ids, mask, NV)
        pieces = tower.convert_ids_to_tokens(ids[0])
        assert attribution.tokens == pieces and (row == 0 or pieces[-1] == "[PAD]")
        words = [w for w, _ in attribution.words]
        assert not {"[CLS]", "[SEP]", "[PAD]"} & set(words)
        assert words == (["nevus", "on", "the", "back", "zqx"] if row == 0 else ["melanoma"])  # "z ##q ##x" merged
        special = ~attribution.real
        assert np.all(attribution.scores[special] == 0) and special[0] and pieces[int(mask.sum()) - 1] == "[SEP]"
        assert max(abs(s) for _, s in attribution.words) == pytest.approx(1.0)


def test_integrated_gradients_finds_the_keyword_and_is_complete(trained):
    notes, labels = keyword_notes(8, 99, neutral=False)
    hits = 0
    for note, label in zip(notes, labels.tolist(), strict=True):
        tokens = trained.tokenize([note])
        attribution = integrated_gradients_text(trained, **tokens, target=label)
        top_word = max(attribution.words, key=lambda ws: ws[1])[0]
        hits += top_word == KEYWORDS[label]
        # completeness: the scores sum to logit(note) - logit(reference) up to the quadrature error
        with torch.no_grad():
            logits = trained(**tokens).text_logits[0, label]
        assert abs(attribution.delta) < 0.05 * max(1.0, abs(float(logits)))
    assert hits >= 7
    randomised = toy_model(seed=1).eval()
    moved = sum(
        max(integrated_gradients_text(randomised, **trained.tokenize([n]), target=y).words, key=lambda ws: ws[1])[0]
        != KEYWORDS[y]
        for n, y in zip(notes, labels.tolist(), strict=True)
    )
    assert moved >= 4  # with random weights the keyword is no longer what drives the class


def test_attention_rollout_by_hand():
    identity = np.broadcast_to(np.eye(3), (2, 2, 3, 3))
    assert np.allclose(attention_rollout(identity), np.eye(3))
    uniform = np.full((1, 1, 2, 2), 0.5)
    assert np.allclose(attention_rollout(uniform), [[0.75, 0.25], [0.25, 0.75]])  # 0.5 A + 0.5 I
    a1 = np.array([[[[1.0, 0.0], [1.0, 0.0]]]])  # every token reads token 0
    two = np.concatenate([a1, uniform])  # (L=2, H=1, 2, 2)
    step1 = 0.5 * a1[0, 0] + 0.5 * np.eye(2)
    step2 = 0.5 * uniform[0, 0] + 0.5 * np.eye(2)
    assert np.allclose(attention_rollout(two), step2 @ step1)
    assert np.allclose(attention_rollout(np.random.default_rng(0).dirichlet(np.ones(4), (3, 2, 4))).sum(-1), 1)


def test_attention_maps_per_layer_and_head_and_pooled_relevance(trained):
    tokens = trained.tokenize(["melanoma on the back", "nevus"])
    ids, mask = tokens["input_ids"][1:], tokens["attention_mask"][1:]  # padded row: padding is cut off
    before = trained.text_encoder.model.config._attn_implementation
    maps = attention_maps(trained, ids, mask)
    T = int(mask.sum())
    assert maps.shape == (2, 2, T, T)  # tiny_bert: 2 layers, 2 heads
    assert np.allclose(maps.sum(-1), 1, atol=1e-5)
    relevance = pooled_relevance(trained.text_encoder, maps)
    assert relevance.shape == (T,) and relevance.sum() == pytest.approx(1.0, abs=1e-5)
    assert trained.text_encoder.model.config._attn_implementation == before  # back on its own attention kernel
