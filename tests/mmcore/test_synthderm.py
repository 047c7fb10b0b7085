"""SynthDerm: determinism (golden hashes), masks, findings that match the pixels, HAM-like metadata, domains, the
lesion-free view of a case, and generate_into the case store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from mmcore.cases import DOMAINS, DX_CLASSES, DX_TYPES, SITES, CaseStore, normalise_site, validate_case
from mmcore.findings import BORDERS, COLOURS, FEATURES, STRUCTURES, VESSEL_FEATURES
from mmcore.notes import strategy_names, write_note
from mmcore.synthderm import HAM_PREVALENCE, case_id_for, generate, generate_into, generate_one
from mmcore.synthderm.canvas import _PALETTE, _SKIN_ADAPT
from mmcore.synthderm.priors import sample_lesion


@pytest.fixture(scope="module")
def balanced() -> list:
    return list(generate(56, seed=7, balanced=True, size=128))


def _fingerprint(sc) -> tuple:
    return sc.image.tobytes(), sc.mask.tobytes(), json.dumps(dataclasses.asdict(sc.case), sort_keys=True)


def test_same_seed_is_byte_identical_and_another_seed_differs():
    first = [_fingerprint(sc) for sc in generate(6, seed=3)]
    again = [_fingerprint(sc) for sc in generate(6, seed=3)]
    alone = [_fingerprint(generate_one(i, seed=3)) for i in range(6)]  # any case is reproducible on its own
    other = [_fingerprint(sc) for sc in generate(6, seed=4)]
    assert first == again == alone
    assert all(a[0] != b[0] for a, b in zip(first, other, strict=True))
    assert len({f[0] for f in first}) == 6
    notes = [[write_note(s, sc.case, seed=3) for s in strategy_names()] for sc in generate(6, seed=3)]
    assert notes == [[write_note(s, sc.case, seed=3) for s in strategy_names()] for sc in generate(6, seed=3)]
    assert notes != [[write_note(s, sc.case, seed=4) for s in strategy_names()] for sc in generate(6, seed=4)]


def test_masks_are_non_empty_boolean_and_fit_the_image(balanced):
    for sc in balanced:
        assert sc.image.size == (128, 128) and sc.image.mode == "RGB"
        assert sc.mask.dtype == bool and sc.mask.shape == (128, 128)
        assert 20 <= sc.mask.sum() < sc.mask.size


def test_metadata_and_findings_use_the_vocabularies(balanced):
    for sc in balanced:
        case = sc.case
        validate_case(case)
        assert case.case_id == case_id_for(7, sc.index) and case.source == "synthderm"
        assert case.dx in DX_CLASSES and case.domain in DOMAINS and case.dx_type in DX_TYPES
        assert case.site in SITES and normalise_site(case.site_detail)[0] == case.site
        assert case.fitzpatrick in range(1, 7) and case.sex in ("male", "female") and 5 <= case.age <= 85
        f = case.findings
        assert f["asymmetry"] in (0, 1, 2) and f["border"] in BORDERS and f["diameter_mm"] > 0
        assert f["colours"] and set(f["colours"]) <= set(COLOURS)
        assert set(f["structures"]) <= set(STRUCTURES) and set(f["features"]) <= set(FEATURES)
        assert f["ulceration"] == ("ulceration" in f["features"])
    assert {sc.case.dx for sc in balanced} == set(DX_CLASSES)


def test_findings_list_exactly_the_structures_drawn(balanced):
    for sc in balanced:
        drawn = {k for k, v in sc.drawn.items() if v >= 3}
        assert set(sc.case.findings["structures"]) == drawn & set(STRUCTURES)
        assert set(sc.case.findings["features"]) == drawn & set(FEATURES)
        if VESSEL_FEATURES & set(sc.case.findings["features"]):
            assert "vessels" in sc.case.findings["structures"]


def test_listed_colours_are_visible_in_the_lesion_pixels():
    """In dermoscopy, a listed colour shows in the lesion: black is dark, blue-grey bluish, red red, white pale."""
    looks = {
        "black": lambda px: px.max(1) < 70,
        "blue-grey": lambda px: (px[:, 2] > px[:, 0] - 5) & (px[:, 2] > px[:, 1]) & (px.max(1) < 200),
        "red": lambda px: (px[:, 0] > px[:, 1] + 60) & (px[:, 0] > px[:, 2] + 40),
        "white": lambda px: (px.mean(1) > 175) & (px.max(1) - px.min(1) < 70),
    }
    seen, listed = Counter(), Counter()
    for sc in generate(70, seed=11, domains=("dermoscopy",), balanced=True):
        px = np.asarray(sc.image).astype(int)[sc.mask]
        for colour, test in looks.items():
            if colour in sc.case.findings["colours"]:
                listed[colour] += 1
                seen[colour] += int(test(px).sum() >= 3)
    for colour in looks:
        assert listed[colour] >= 5, colour
        assert seen[colour] / listed[colour] >= 0.85, (colour, seen[colour], listed[colour])


def test_prevalence_is_ham_like_or_balanced_and_metadata_follows_the_class():
    def draw(balanced: bool, n: int = 4000) -> list:
        return [sample_lesion(np.random.default_rng([1, i]), DOMAINS, balanced) for i in range(n)]

    ham = draw(False)
    freq = Counter(les.dx for les in ham)
    for dx, p in HAM_PREVALENCE.items():
        assert abs(freq[dx] / len(ham) - p) < max(0.02, p * 0.3), dx
    even = Counter(les.dx for les in draw(True))
    assert all(abs(even[dx] / 4000 - 1 / 7) < 0.025 for dx in DX_CLASSES)

    by = {dx: [les for les in ham if les.dx == dx] for dx in ("mel", "nv", "bcc", "akiec")}
    assert np.mean([les.age for les in by["mel"]]) > np.mean([les.age for les in by["nv"]]) + 8
    histo = {dx: np.mean([les.dx_type == "histopathology" for les in by[dx]]) for dx in by}
    assert histo["mel"] > 0.9 and histo["bcc"] > 0.9
    assert np.mean([les.dx_type == "serial imaging showing no change" for les in by["nv"]]) > 0.4
    assert np.mean([normalise_site(les.site_detail)[0] == "head/neck" for les in by["akiec"]]) > 0.45
    dark = {d: np.mean([les.fitzpatrick >= 4 for les in ham if les.domain == d]) for d in DOMAINS}
    assert dark["atlas"] > 0.6 > 0.2 > dark["dermoscopy"]


def test_domains_frame_the_lesion_differently():
    frac = {d: [] for d in DOMAINS}
    dark_corners = 0
    for d in DOMAINS:
        for sc in generate(24, seed=5, domains=(d,), balanced=True, size=96):
            frac[d].append(sc.mask.mean())
            if d == "dermoscopy":
                dark_corners += int(np.asarray(sc.image)[:3, :3].max() < 40)
    assert np.median(frac["clinical"]) < 0.5 * np.median(frac["dermoscopy"])  # smartphone: wider field
    assert dark_corners >= 6  # the dermatoscope's round field


def test_repeat_views_share_the_lesion():
    cases = list(generate(40, seed=2, size=64))
    groups = Counter(sc.case.lesion_id for sc in cases)
    repeated = [lid for lid, n in groups.items() if n > 1]
    assert repeated and max(groups.values()) <= 3
    for lid in repeated:
        views = [sc for sc in cases if sc.case.lesion_id == lid]
        assert len({(v.case.dx, v.case.age, v.case.patient_id, json.dumps(v.case.findings)) for v in views}) == 1
        assert len({v.image.tobytes() for v in views}) == len(views)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="domains"):
        generate_one(0, domains=("microscopy",))
    with pytest.raises(ValueError, match="size"):
        generate_one(0, size=8)


def test_generate_into_stores_cases_masks_notes_and_splits(tmp_path):
    with CaseStore(tmp_path) as store:
        result = generate_into(store, 12, seed=5, domains=("dermoscopy", "clinical"), size=64)
        assert result.generated == result.stored == 12 == sum(result.by_dx.values()) == sum(result.by_domain.values())
        assert set(result.by_domain) <= {"dermoscopy", "clinical"} and sum(result.splits.values()) == 12

        cases = store.cases(with_notes=True)
        assert [c.case_id for c in cases] == [f"synthderm:s5:{i:06d}" for i in range(12)]
        lesion_split: dict[str, set] = {}
        for case in cases:
            assert set(case.notes) == set(strategy_names()) and all(case.notes.values())
            assert case.split in ("train", "val", "test") and case.lesion_id and case.patient_id
            assert store.load_mask(case).any() and store.load_image(case).size == (64, 64)
            lesion_split.setdefault(case.lesion_id, set()).add(case.split)
        assert all(len(s) == 1 for s in lesion_split.values())  # a lesion never straddles splits

        seen = []
        again = generate_into(
            store, 12, seed=5, domains=("dermoscopy", "clinical"), size=64, progress=lambda *a: seen.append(a)
        )
        assert again.stored == 12 and store.count() == 12  # idempotent: the same ids, nothing added
        assert seen[-1] == (12, 12)

        for bad, match in [({"n": 0}, "n must"), ({"domains": ("x-ray",)}, "domains"), ({"size": 16}, "size")]:
            with pytest.raises(ValueError, match=match):
                generate_into(store, **{"n": 3, **bad})
        assert store.count() == 12


# ---- golden hashes: a refactor must not change one pixel, mask, finding or note ----

_GOLDEN_REQUESTS = [
    {"n": 8, "seed": 3, "size": 64},
    *[{"n": 3, "seed": 5, "size": 96, "balanced": True, "domains": (d,)} for d in ("dermoscopy", "clinical", "atlas")],
    {"n": 2, "seed": 0, "size": 224, "balanced": True, "start": 40},
]
# Recorded before SynthDerm became a package; only a deliberate change to the drawing (or a Pillow release that
# resamples, blurs or JPEG-encodes differently) may change them, and then in the same commit, with the reason.
GOLDEN = {
    "images": "8b5d3d3197aaa6fdb2e58fc592fc9e0f1a8b4debbb3c2b7d3b58c2f544b6e39e",
    "masks": "c1dff79a075fb7c666481e20e41a21a04c750ecf12351bb027e4099d7cb7a0db",
    "findings": "56a1afcf6a996c81ee7d0b40127e4b97125ba640698ff5da382c200004053cc5",
    "metadata": "60d11174b69ef7e20bda12495469f1beff0c936d53e3ca2fffd01402db36cc72",
    "notes": "906607ac6ba6208186d75cc50ce7d51d1b96775983ab2837b1506b89c706e008",
}
GOLDEN_WITHOUT_LESION = {
    "images": "9615fd9b6d29540391a372faa6c5b36ff107122204ba0d3acf0f2adb36d571c8",
    "masks": "546d3f4d3c1b6b7962e2cd29d5b6488b3a84d23b79e3c4a6a663ab0a38b86bb0",
    "findings": "872edd399bafdfec334e130ac10df4e231f9c81975396c60c2bb4a280d0ac257",
    "metadata": "68ef7fcfbde7f659dcd6e97d49df3a95b52049793c8ec217a6eb50e707801598",
    "notes": "2683235200d277d02f6fbcc9c29dcf3bc46791157d11ed2773cc13c30efcd0f1",
}


def _digests(lesion: bool = True) -> dict[str, str]:
    parts = ("images", "masks", "findings", "metadata", "notes")
    h = {k: hashlib.sha256() for k in parts}
    for request in _GOLDEN_REQUESTS:
        for sc in generate(**request, lesion=lesion):
            c = sc.case
            h["images"].update(sc.image.tobytes())
            h["masks"].update(sc.mask.tobytes())
            h["findings"].update(json.dumps([c.findings, sc.drawn], sort_keys=True).encode())
            meta = [c.case_id, c.dx, c.lesion_id, c.patient_id, c.age, c.sex, c.site, c.site_detail, c.fitzpatrick]
            meta += [c.dx_type, c.domain, c.extra]
            h["metadata"].update(json.dumps(meta, sort_keys=True).encode())
            h["notes"].update("\0".join(write_note(s, c, seed=3) for s in ("M", "P1", "P2", "P3", "clinical")).encode())
    return {k: v.hexdigest() for k, v in h.items()}


def test_output_matches_the_golden_hashes():
    assert _digests() == GOLDEN


def test_the_lesion_free_view_matches_its_golden_hashes():
    assert _digests(lesion=False) == GOLDEN_WITHOUT_LESION


# ---- the same case without its lesion (the shortcut check) ----


def test_without_the_lesion_only_the_lesion_changes():
    """Same skin, hair, light, framing and compression: the images differ inside the lesion mask, hardly outside."""
    for domain in DOMAINS:
        for index in range(6):
            with_ = generate_one(index, seed=9, domains=(domain,), balanced=True, size=96)
            without = generate_one(index, seed=9, domains=(domain,), balanced=True, size=96, lesion=False)
            assert without.mask.shape == with_.mask.shape and without.mask.dtype == bool and not without.mask.any()
            assert without.case.findings == {} and without.drawn == {} and without.case.extra["lesion"] is False
            same_meta = ("case_id", "dx", "lesion_id", "age", "sex", "site", "fitzpatrick", "domain")
            assert all(getattr(without.case, k) == getattr(with_.case, k) for k in same_meta)
            diff = np.abs(np.asarray(with_.image, dtype=float) - np.asarray(without.image, dtype=float)).mean(axis=2)
            inside, outside = diff[with_.mask].mean(), diff[~with_.mask].mean()
            assert inside > 10 * outside and inside > 10, (domain, index, inside, outside)
            if domain == "dermoscopy":  # no blur, no JPEG: away from the lesion the pixels are the very same
                assert (diff[~with_.mask] == 0).mean() > 0.75
    assert (
        generate_one(3, seed=9, lesion=False).image.tobytes() == generate_one(3, seed=9, lesion=False).image.tobytes()
    )
    assert [sc.image.tobytes() for sc in generate(3, seed=9, size=64, lesion=False)] == [
        generate_one(i, seed=9, size=64, lesion=False).image.tobytes() for i in range(3)
    ]


def test_the_drawing_palette_names_exactly_the_vocabulary_colours():
    """Every colour SynthDerm draws is one a finding can name, and every vocabulary colour can be drawn."""
    assert {vocab for _, vocab in _PALETTE.values()} == set(COLOURS) == set(_SKIN_ADAPT)
