"""The trunk-activation cache: each view computed once and stored, the clean view feeding the top exactly, augmented
views deterministic, lesion removal, notes' states without padding, and the trained towers' features filled from it."""

from __future__ import annotations

import numpy as np
import torch

from mmcore.activation_cache import (
    LESION_FREE,
    ActivationCache,
    fill_feature_cache,
    image_activations,
    image_trunk_key,
    lesion_free_activations,
    remove_lesion,
    text_activations,
    text_trunk_key,
)
from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import load_config
from mmcore.datasets import FeatureCache, image_features, image_tower_key, load_case_set, text_features, text_tower_key
from mmcore.model import build_model

TINY = load_config("tiny", env={}).model
CPU = torch.device("cpu")


def _model():
    torch.manual_seed(0)
    model = build_model(TINY, DX_CLASSES)
    image_trunk, text_trunk, partial = model.split_towers(1, 1)
    return model.eval(), image_trunk, text_trunk, partial


def test_views_are_computed_once_and_the_clean_view_feeds_the_top_exactly(synth_home):
    model, trunk, _, partial = _model()
    root = synth_home / "cache" / "activations"
    with CaseStore(synth_home) as store:
        cases = store.cases(split="val")[:6]
        cache = ActivationCache(root, image_trunk_key(model, trunk, 1))
        acts, report = image_activations(model, trunk, store, cases, 3, cache, CPU)
        assert acts.shape == (6, 3, 16, 8, 8) and report.computed == 6 and report.forwards == 18
        assert len(list(cache.dir.rglob("*.npy"))) == 18 and report.bytes == cache.nbytes() > 0
        again, report = image_activations(model, trunk, store, cases, 3, cache, CPU)
        assert report.computed == report.forwards == 0 and torch.equal(again, acts)  # read back, not recomputed
        fresh, _ = image_activations(model, trunk, store, cases, 3, ActivationCache(root, "other"), CPU)
        torch.testing.assert_close(fresh, acts, atol=0, rtol=0)  # a view is the same whoever computes it
        images = torch.stack([model.image_transform()(store.load_image(c)) for c in cases])
    assert cache.get(cases[0].image_sha256, 0).dtype == np.float32
    assert cache.get(cases[0].image_sha256, 1).dtype == np.float16  # augmented views: half the disk
    assert not torch.allclose(acts[:, 1], acts[:, 0]) and not torch.allclose(acts[:, 1], acts[:, 2])
    with torch.no_grad():
        torch.testing.assert_close(acts[:, 0], trunk(images), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(partial.image_top(acts[:, 0]), model.image_encoder(images), atol=1e-6, rtol=1e-5)
    # Another cut of the tower is another cache.
    assert image_trunk_key(model, model.image_encoder.split_trunk(2)[0], 2) != cache.dir.name


def test_remove_lesion_fills_the_lesion_with_the_skin_around_it():
    rng = np.random.default_rng(0)
    skin = np.array([220.0, 170.0, 150.0])
    image = np.clip(skin + rng.normal(0, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[:64, :64]
    mask = (ys - 30) ** 2 + (xs - 34) ** 2 < 12**2
    image[mask] = (60, 40, 30)  # a dark lesion
    free = remove_lesion(image, mask)
    far = ((ys - 30) ** 2 + (xs - 34) ** 2) > 20**2
    assert np.array_equal(free[far], image[far])  # untouched away from the lesion
    assert np.abs(free[mask].mean(0) - skin).max() < 6  # skin colour where the lesion was
    assert 1.5 < free[mask].astype(float).std(0).mean() < 5  # with the skin's grain (sd 3), not a smooth patch


def test_lesion_free_views_and_notes_states_are_cached(synth_home):
    model, image_trunk, text_trunk, _ = _model()
    root = synth_home / "cache" / "activations"
    with CaseStore(synth_home) as store:
        cases = store.cases(split="val")[:5]
        cache = ActivationCache(root, image_trunk_key(model, image_trunk, 1))
        outliers, report = lesion_free_activations(model, image_trunk, store, cases, cache, CPU)
        assert outliers.shape == (5, 16, 8, 8) and report.computed == 5
        assert cache.get(cases[0].image_sha256, LESION_FREE) is not None
        acts, _ = image_activations(model, image_trunk, store, cases, 1, cache, CPU)
    assert not torch.allclose(outliers, acts[:, 0], atol=1e-2)
    notes = ["melanoma on the back", "nevus", "melanoma on the back", ""]
    text_cache = ActivationCache(root, text_trunk_key(model, text_trunk, 1))
    states, report = text_activations(model, text_trunk, notes, text_cache, CPU)
    assert report.computed == 3  # equal notes once
    tokens = model.tokenize(notes)
    assert [len(s) for s in states] == tokens["attention_mask"].sum(1).tolist()  # real tokens only
    with torch.no_grad():
        full = text_trunk(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(states[0], full[0, : len(states[0])], atol=1e-6, rtol=1e-5)


def test_filled_features_are_what_the_trained_towers_compute(synth_home):
    model, image_trunk, text_trunk, partial = _model()
    root = synth_home / "cache" / "activations"
    with CaseStore(synth_home) as store:
        cs = load_case_set(store, "val", DX_CLASSES, ("P1",))
        acts, _ = image_activations(model, image_trunk, store, cs.cases, 1, ActivationCache(root, "i"), CPU)
        states, _ = text_activations(model, text_trunk, cs.notes["P1"], ActivationCache(root, "t"), CPU)
        with torch.no_grad():  # "training" changed the tops: the towers are not the ones the cache was keyed on
            model.image_encoder.conv3.weight.mul_(1.5)
            model.text_encoder.model.encoder.layer[1].output.dense.bias.add_(0.1)
        written = fill_feature_cache(model, partial, cs, acts, {"P1": states}, synth_home / "cache", CPU)
        assert written == len(cs) + len(set(cs.notes["P1"]))
        image_cache = FeatureCache(synth_home / "cache" / "features", image_tower_key(model))
        cached = image_features(model, store, cs.cases, CPU, cache=image_cache)
        fresh = image_features(model, store, cs.cases, CPU)
        text_cache = FeatureCache(synth_home / "cache" / "features", text_tower_key(model))
        cached_text = text_features(model, cs.notes["P1"], CPU, cache=text_cache)
        fresh_text = text_features(model, cs.notes["P1"], CPU)
    assert len(list(image_cache.dir.rglob("*.npy"))) == len(cs)
    torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_text, fresh_text, atol=1e-5, rtol=1e-5)
