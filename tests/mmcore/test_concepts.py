"""Findings the model sees: the vocabulary, query sentences the fidelity checker reads back, the probe's files, and a
tiny model trained on findings scoring a drawn finding above one that is not drawn."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmcore.concepts import (
    FINDING_NAMES,
    FINDINGS,
    FindingsProbe,
    FindingsScorer,
    embed_texts,
    finding,
    findings_matrix,
    findings_query,
    fit_probe,
    label_of,
    load_findings_probe,
    zero_shot_directions,
)
from mmcore.config import LossConfig, load_config
from mmcore.fidelity import read_note
from mmcore.findings import COLOURS, FEATURES, STRUCTURES
from mmcore.losses import total_loss
from mmcore.model import MultimodalModel, build_model

TINY = load_config("tiny", env={}).model
# The value fidelity.read_note gives each finding's words, by group (asymmetry: any of its axes words).
EXPECTED = {"asymmetry": {"1", "2", "any"}, "border": {"indistinct"}, "network": {"irregular"}}


def test_vocabulary_covers_every_term_once():
    assert len(set(FINDING_NAMES)) == len(FINDINGS)
    terms = {(f.group, f.term) for f in FINDINGS}
    assert {("colour", c) for c in COLOURS} | {("structure", s) for s in STRUCTURES} <= terms
    assert {("feature", x) for x in FEATURES} <= terms
    assert all(f.present and f.absent for f in FINDINGS)
    with pytest.raises(ValueError, match="unknown finding"):
        finding("sunburn")


def test_drawn_reads_case_findings_and_says_when_they_are_unknown():
    case = {
        "asymmetry": 2,
        "border": "mixed",
        "colours": ["dark brown", "blue-grey"],
        "structures": ["pigment network", "blue-white veil"],
        "network": "irregular",
        "features": ["ulceration"],
    }
    drawn = {f.name for f in FINDINGS if f.drawn(case)}
    assert drawn == {
        "asymmetry",
        "indistinct border",
        "dark brown",
        "blue-grey",
        "pigment network",
        "blue-white veil",
        "atypical pigment network",
        "ulceration",
    }
    assert all(f.drawn({}) is None for f in FINDINGS)  # a real dataset without recorded findings
    regular = {**case, "asymmetry": 0, "border": "sharp", "network": "regular"}
    assert not finding("asymmetry").drawn(regular) and not finding("indistinct border").drawn(regular)
    assert not finding("atypical pigment network").drawn(regular)
    matrix = findings_matrix([type("C", (), {"findings": case})(), type("C", (), {"findings": {}})()])
    assert matrix.shape == (2, len(FINDINGS)) and (matrix[1] == -1).all() and matrix[0].sum() == len(drawn)


@pytest.mark.parametrize("name", FINDING_NAMES)
def test_a_findings_query_says_the_finding_as_the_fidelity_checker_reads_it(name):
    f = finding(name)
    claims = [c for c in read_note(findings_query([name])) if not c.negated]
    assert {c.value for c in claims} & EXPECTED.get(f.group, {f.term}), (findings_query([name]), claims)


def test_a_query_of_several_findings_names_each():
    text = findings_query(["blue-white veil", "atypical pigment network", "black", "asymmetry", "blue-white veil"])
    assert text == (
        "A lesion, asymmetric in both axes. Colours: black. Dermoscopy shows blue-white veil and an atypical pigment "
        "network."
    )
    with pytest.raises(ValueError):
        findings_query([])


def test_labels_say_how_sure_and_whether_calibrated():
    assert label_of(0.9, True) == "likely" and label_of(0.5, True) == "possible" and label_of(0.1, True) == "unlikely"
    assert label_of(0.9, False) == "likely (uncalibrated)"


def test_probe_files_round_trip_and_refuse_tampering(tmp_path):
    rng = np.random.default_rng(0)
    probe = FindingsProbe(
        ("red", "black"),
        rng.normal(size=(2, 16)).astype(np.float32),
        np.array([0.5, -1.0], dtype=np.float32),
        {"val_auroc": {"red": 0.9, "black": None}},
        rng.normal(size=(len(FINDINGS), 16)).astype(np.float32),
    )
    names = probe.save(tmp_path)
    import hashlib

    files = {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in names}
    back = load_findings_probe(tmp_path, files)
    assert back.names == probe.names and back.meta == probe.meta
    np.testing.assert_array_equal(back.weights, probe.weights)
    np.testing.assert_array_equal(back.zero_shot, probe.zero_shot)
    assert load_findings_probe(tmp_path / "nothing-here") is None

    meta = json.loads((tmp_path / "findings.json").read_text())
    meta["names"] = ["red"]
    (tmp_path / "findings.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not recorded in the model card"):
        load_findings_probe(tmp_path, files)
    with pytest.raises(ValueError, match="malformed"):
        load_findings_probe(tmp_path)  # without hashes: the shapes no longer match the names


def test_scorer_uses_the_probe_where_there_is_one():
    rng = np.random.default_rng(1)
    zero = rng.normal(size=(len(FINDINGS), 8)).astype(np.float32)
    probe = FindingsProbe(("red",), np.ones((1, 8), np.float32), np.array([-2.0], np.float32), {"val_auroc": {}})
    scorer = FindingsScorer(zero, probe)
    e = np.full(8, 1 / np.sqrt(8), dtype=np.float32)
    scores = {s.name: s for s in scorer.explain(e)}
    red = scores["red"]
    assert red.calibrated and red.score == pytest.approx(1 / (1 + np.exp(-(8 / np.sqrt(8) - 2))), rel=1e-5)
    assert not scores["black"].calibrated and scores["black"].label.endswith("(uncalibrated)")
    np.testing.assert_allclose(scorer.direction("red"), np.ones(8))
    assert all(0 <= s.score <= 1 for s in scores.values())


# ---- a tiny model trained on a finding it can see ----------------------------------------------------------------

# The notes name each disc's colour in the words the prompts use (mmcore.notes.COLOUR_WORDS in P1's sentences).
NOTES = {
    "black": ("Colours: black.", "It shows black."),
    "light brown": ("Colours: light brown.", "It shows tan.", "Colours: pale brown.", "It shows light brown."),
}
SKIN, DISC = (224, 178, 150), {"black": (20, 16, 14), "light brown": (186, 128, 84)}


def _photo(colour: str, rng: np.random.Generator) -> Image.Image:
    """32-px skin with one large disc of `colour` (a strongly visible finding) at a random place and size, and noise."""
    skin = np.array(SKIN) + rng.integers(-8, 9, 3)
    image = Image.new("RGB", (32, 32), tuple(int(v) for v in skin))
    r, (cx, cy) = rng.integers(9, 13), rng.integers(13, 19, 2)
    ImageDraw.Draw(image).ellipse([cx - r, cy - r, cx + r, cy + r], fill=DISC[colour])
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (32, 32, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _data(model: MultimodalModel, n: int, seed: int) -> tuple[torch.Tensor, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    colours = ["black" if i % 2 else "light brown" for i in range(n)]
    transform = model.image_transform()
    images = torch.stack([transform(_photo(c, rng)) for c in colours])  # (n, 3, 32, 32)
    return images, colours, np.array([c == "black" for c in colours])


def _trained(seed: int = 0, steps: int = 60) -> MultimodalModel:
    """The tiny model's heads trained as the demo trains them (frozen towers, cached features, the real objective) on
    photos paired with notes that name their colour."""
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(TINY, dropout=0.0), ("mel", "nv"))
    model.freeze_backbones()
    images, colours, black = _data(model, 32, seed=seed)
    tokens = model.tokenize([NOTES[c][i % len(NOTES[c])] for i, c in enumerate(colours)])
    with torch.no_grad():
        image_features = model.image_encoder(images)  # (32, F_img)
        text_features = model.text_encoder(tokens["input_ids"], tokens["attention_mask"]).pooled  # (32, F_txt)
    labels = torch.as_tensor(~black, dtype=torch.long)  # black discs drawn as mel, light brown as nv
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        out = model.forward_features(image_features, text_features)
        loss = total_loss(out, labels, LossConfig()).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_a_drawn_finding_scores_higher_than_one_not_drawn_on_a_model_trained_on_findings():
    model = _trained()
    images, _, black = _data(model, 40, seed=1)  # photos the model never saw
    train_images, _, train_black = _data(model, 32, seed=0)
    with torch.no_grad():
        embeds, train_embeds = model.encode_image(images).numpy(), model.encode_image(train_images).numpy()  # (N, D)
    k_black, k_brown = FINDING_NAMES.index("black"), FINDING_NAMES.index("light brown")

    # The probe (what ships where findings are known), fitted on the training photos' recorded colour.
    weights, bias = zip(*(fit_probe(train_embeds, y) for y in (train_black, ~train_black)), strict=True)
    probe = FindingsProbe(("black", "light brown"), np.stack(weights), np.asarray(bias, np.float32))
    scores = FindingsScorer(zero_shot_directions(model), probe).scores(embeds)  # (40, K)
    drawn = np.where(black, scores[:, k_black], scores[:, k_brown])  # each photo's drawn colour
    not_drawn = np.where(black, scores[:, k_brown], scores[:, k_black])
    assert (drawn > not_drawn).all() and drawn.min() > 0.5 > not_drawn.max()

    # What zero-shot reads: the photos sit nearer the prompts of the colour drawn in them. (The zero-shot score also
    # subtracts a neutral description, which a random tiny text tower places anywhere: bench/findings.py measures it.)
    present = {
        k: embed_texts(model, finding(k).present).mean(0) for k in ("black", "light brown")
    }  # (D,) each, in the shared space
    towards_black = embeds @ (present["black"] - present["light brown"])  # (40,)
    assert towards_black[black].min() > towards_black[~black].max()
