"""Splits by lesion and patient: stable per group key, in the configured proportions, never straddling a group."""

from __future__ import annotations

from collections import Counter

from mmcore.cases import Case
from mmcore.splits import SPLITS, assign_groups, assign_splits, split_of


def test_split_of_is_stable_and_follows_the_fractions():
    keys = [f"lesion:{i}" for i in range(3000)]
    first = [split_of(k) for k in keys]
    assert first == [split_of(k) for k in keys]
    counts = Counter(first)
    assert set(counts) == set(SPLITS) and abs(counts["train"] / 3000 - 0.7) < 0.03
    assert {split_of(k, (1, 0, 0)) for k in keys[:50]} == {"train"}
    assert [split_of(k, seed=1) for k in keys[:200]] != first[:200]  # another seed, another draw


def test_a_patients_lesions_and_a_lesions_images_stay_together():
    cases = [
        Case(case_id="a1", source="s", dx="nv", lesion_id="L1", patient_id="P1"),
        Case(case_id="a2", source="s", dx="nv", lesion_id="L1"),
        Case(case_id="b1", source="s", dx="mel", lesion_id="L2", patient_id="P1"),
        Case(case_id="c1", source="s", dx="bcc", lesion_id="L3", patient_id="P2"),
        Case(case_id="d1", source="t", dx="bcc", lesion_id="L3"),  # another source: another lesion
    ]
    groups = assign_groups(cases)
    assert groups["a1"] == groups["a2"] == groups["b1"] and len({groups["c1"], groups["d1"], groups["a1"]}) == 3
    splits = assign_splits(cases)
    assert splits["a1"] == splits["a2"] == splits["b1"]
