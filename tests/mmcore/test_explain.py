"""Explanations on tiny models: hand-made models with known answers, a toy task whose evidence is a striped square
(so the maps must point at it), the model-parameter randomisation sanity check (Adebayo et al., 2018), token
attributions over real words only, attention rollout, overlays, mask metrics and `eval --explanations`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from mmcore.cases import DX_CLASSES
from mmcore.config import load_config
from mmcore.explain import (
    IMAGE_METHODS,
    attention_maps,
    attention_rollout,
    attribute_image,
    colorbar,
    colorize,
    deletion_auc,
    gradcam,
    integrated_gradients_text,
    iou_at_top,
    merge_word_pieces,
    overlay,
    pointing_game,
    pooled_relevance,
    similarity_maps,
    top_region,
)
from mmcore.model import MultimodalModel, build_model

TINY = load_config("tiny", env={}).model
S, SQ = 64, 16  # image side and the striped square's side
MEL, NV, BKL = DX_CLASSES.index("mel"), DX_CLASSES.index("nv"), DX_CLASSES.index("bkl")
KEYWORDS = {MEL: "melanoma", NV: "nevus"}
FILLER = ["lesion", "on", "the", "back", "of", "a", "patient", "with", "new", "brown", "patch", "skin", "history"]


# --- the toy task -----------------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def trained() -> MultimodalModel:
    return train_toy()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return striped_squares(8, 10_000)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Spearman correlation of paired maps; a constant map correlates 0 with anything."""
    values = []
    for x, y in zip(a, b, strict=True):
        values.append(0.0 if x.std() == 0 or y.std() == 0 else spearmanr(x.ravel(), y.ravel())[0])
    return float(np.mean(values))


# --- hand-made models -------------------------------------------------------------------------------------------


class TwoChannelNet(nn.Module):
    """Activations A = relu(conv) with 2 identity-like channels, global average pool, linear: Grad-CAM is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[2.0, 0.5], [0.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_gradcam_matches_its_formula_on_a_hand_made_net():
    net = TwoChannelNet().eval()
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    cam = gradcam(net, net.act, x, target=0)  # (1, 2, 2)
    # weights alpha_k = mean gradient = fc[0, k]; cam = relu(sum_k alpha_k A_k), then divided by its max
    A = torch.relu(torch.cat([x, -x], 1))[0]  # (2, 2, 2)
    expected = torch.relu(2.0 * A[0] + 0.5 * A[1])
    assert torch.allclose(cam[0], expected / expected.max(), atol=1e-6)


def test_deletion_auc_is_lower_when_the_evidence_goes_first():
    class Region(nn.Module):  # logit of class 1 = mean of the top-left quadrant
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            score = x[:, :, :8, :8].mean((1, 2, 3)) * 10
            return torch.stack([torch.zeros_like(score), score], -1)

    images = torch.ones(1, 3, 16, 16)
    right = np.zeros((16, 16), dtype=np.float32)
    right[:8, :8] = 1.0
    good, bad = deletion_auc(Region(), images, right, 1), deletion_auc(Region(), images, 1 - right, 1)
    assert good < bad - 0.3


def test_mask_metrics_on_hand_made_maps():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:5] = True
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2:5, 2:5] = 1.0
    assert pointing_game(heat, mask) == 1.0 and pointing_game(1 - heat, mask) == 0.0
    assert iou_at_top(heat, mask) == pytest.approx(1.0)  # top 9% == the mask
    assert iou_at_top(heat, mask, 0.2) == pytest.approx(9 / 20)
    assert top_region(heat, 0.09).sum() == 9
    small = np.kron(heat[::2, ::2], np.ones((2, 2)))[:10, :10]  # a map at another resolution is resized first
    assert pointing_game(small[::2, ::2], mask) == 1.0


# --- image attributions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_maps_have_the_input_shape_and_unit_range(method):
    model = toy_model().eval()
    images, _, labels = striped_squares(2, 1)
    maps = attribute_image(model, images, method, labels.tolist(), n_steps=8, nt_samples=4)
    assert maps.shape == (2, S, S)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6 and not maps.requires_grad


def test_the_fused_logits_can_be_explained_and_inference_mode_does_not_break_it(trained, held_out):
    images, _, labels = held_out
    tokens = trained.tokenize(["melanoma on the back"])
    with torch.no_grad():
        note_features = trained.text_encoder(**tokens).pooled  # (1, F)
    with torch.inference_mode():  # a caller's inference_mode must not stop the gradients
        own = attribute_image(trained, images[:2], "gradcam", labels[:2].tolist())
        fused = attribute_image(trained, images[:2], "gradcam", labels[:2].tolist(), note_features=note_features)
    assert own.shape == fused.shape == (2, S, S)


@pytest.mark.parametrize("method", ["gradcam", "ig", "occlusion"])
def test_trained_maps_point_at_the_striped_square(trained, held_out, method):
    images, masks, labels = held_out
    with torch.no_grad():
        assert (trained(images=images).image_logits.argmax(-1) == labels).float().mean() >= 0.9
    maps = attribute_image(trained, images, method, labels.tolist()).numpy()
    hits = [pointing_game(m, mask.numpy()) for m, mask in zip(maps, masks, strict=True)]
    assert np.mean(hits) >= 0.7  # chance is the square's area, 6%


def test_maps_change_when_the_weights_are_randomised(trained, held_out):
    """Model-parameter randomisation test (Adebayo et al.): maps of the trained model and of the same architecture
    with random weights must differ. Measured here (Spearman): Grad-CAM ~0, Occlusion ~0, IG ~0.4 (it multiplies by
    the input, whose square stands out either way), SmoothGrad ~0.6 (both share the strided convolutions' grid
    pattern), while SmoothGrad run twice on the trained model agrees at ~0.95. Ignoring the weights would give ~1.
    """
    images, _, labels = (t[:4] for t in held_out)
    randomised = toy_model(seed=1).eval()
    limits = {"gradcam": 0.3, "occlusion": 0.3, "ig": 0.6, "smoothgrad": 0.75}
    maps = {}
    for method, limit in limits.items():
        maps[method] = [attribute_image(m, images, method, labels.tolist()).numpy() for m in (trained, randomised)]
        assert _rank_correlation(*maps[method]) < limit, method
    trained_sg, randomised_sg = maps["smoothgrad"]
    again = attribute_image(trained, images, "smoothgrad", labels.tolist()).numpy()  # its own noise, for scale
    assert _rank_correlation(trained_sg, again) > _rank_correlation(trained_sg, randomised_sg) + 0.2


def test_similarity_maps_point_at_the_evidence_that_moves_the_similarity(trained, held_out):
    images, masks, _ = held_out
    with torch.no_grad():
        other = trained(images=images[1:2]).image_embeds[0]  # (D,) the retrieved case's embedding
    cam = similarity_maps(trained, images, other, method="gradcam")
    assert cam.shape == (len(images), S, S) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    # Integrated Gradients from the blurred image: what separates the similarity from that of a blurred copy is
    # the stripes (same class: they raise it; the other class: they lower it), so the map finds the square
    maps = similarity_maps(trained, images, other, method="ig").numpy()
    assert np.mean([pointing_game(m, k.numpy()) for m, k in zip(maps, masks, strict=True)]) >= 0.7


def test_concurrent_attributions_on_one_model_match_the_sequential_ones(trained, held_out):
    images, _, labels = held_out
    reference = attribute_image(trained, images[:4], "gradcam", labels[:4].tolist())
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(attribute_image(trained, images[:4], "gradcam", labels[:4].tolist()))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 40
    assert all(torch.allclose(r, reference, atol=1e-6) for r in results)


# --- text attributions ----------------------------------------------------------------------------------------


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


# --- attention --------------------------------------------------------------------------------------------------


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


# --- overlays ---------------------------------------------------------------------------------------------------


def test_colour_map_overlay_contour_and_colour_bar():
    assert colorize(np.array([[0.0, 1.0]])).tolist() == [[[0, 0, 4], [252, 255, 164]]]  # inferno's ends
    with pytest.raises(ValueError, match="colour map"):
        colorize(np.zeros((2, 2)), "rainbow")
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[2:5, 2:5] = 1.0
    assert np.array_equal(np.asarray(overlay(image, heat, opacity=0.0, contour_top=None)), np.asarray(image))
    full = np.asarray(overlay(image, np.ones((8, 8)), opacity=1.0, contour_top=None))
    assert (full == [252, 255, 164]).all()
    outlined = np.asarray(overlay(image, heat, opacity=0.0, colormap="jet", contour_top=0.1))
    edge = (outlined == [0, 255, 255]).all(-1)
    assert edge.any() and not edge[0].any() and not edge[:, -1].any()  # drawn around the hot region only
    bar = colorbar("viridis", length=100)
    assert bar.size[0] == 100 and bar.getpixel((0, 0)) == (68, 1, 84)


# --- eval --explanations ------------------------------------------------------------------------------------------


def test_cli_eval_explanations_scores_synthderm_masks(tmp_path, monkeypatch, capsys):
    from mmcore.cases import CaseStore
    from mmcore.cli import main
    from mmcore.explain import cli_eval_explanations
    from mmcore.model_store import save_version, set_active

    monkeypatch.setenv("MMDERM_HOME", str(tmp_path))
    assert main(["synth", "--n", "6", "--seed", "3", "--size", "64", "--json"]) == 0
    capsys.readouterr()
    cfg = load_config("tiny")
    with CaseStore(tmp_path) as store:
        split = store.cases()[0].split
    set_active(cfg, save_version(toy_model().eval(), cfg))
    args = argparse.Namespace(model=None, split=split, limit=2, json=True, methods=["gradcam", "occlusion"])
    assert cli_eval_explanations(args, cfg) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cases"] >= 1 and out["reference"]["seed_002_lesion_iou"] == 0.89
    assert set(out["methods"]) == {"gradcam", "occlusion", "random", "centre"}
    for row in out["methods"].values():
        assert 0 <= row["pointing_game"] <= 1 and 0 <= row["iou_mask_area"] <= 1 and 0 <= row["deletion_auc"] <= 1
    args.json = False
    assert cli_eval_explanations(args, cfg) == 0
    text = capsys.readouterr().out
    assert "IoU@mask" in text and "0.89" in text and "seed 002" in text
