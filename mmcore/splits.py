"""Splits by connected group of lesion and patient, never by image: a lesion's images and a patient's lesions always
land in one split, and a group's split never changes once assigned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmcore.cases import Case

SPLITS = ("train", "val", "test")


def split_of(key: str, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> str:
    """A stable split for a group key: the same key always lands in the same split."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(fractions)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac / total
        if u < edge:
            return name
    return SPLITS[-1]


def assign_splits(
    cases: Iterable[Case], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, str]:
    """case_id -> split, keeping every image of a lesion and every lesion of a patient in one split.

    Cases sharing a lesion_id or a patient_id (within one source) form a group (union-find); the group's
    smallest key picks its split, so a group never straddles train and test.
    """
    groups = assign_groups(cases)
    return {cid: split_of(g, fractions, seed) for cid, g in groups.items()}


def assign_groups(cases: Iterable[Case]) -> dict[str, str]:
    """case_id -> group key: the connected component of shared lesion_id and patient_id (union-find)."""
    cases = list(cases)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for c in cases:
        node = f"case:{c.case_id}"
        find(node)
        if c.lesion_id:
            union(node, f"lesion:{c.source}:{c.lesion_id}")
        if c.patient_id:
            union(node, f"patient:{c.source}:{c.patient_id}")
    return {c.case_id: find(f"case:{c.case_id}") for c in cases}
