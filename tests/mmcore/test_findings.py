"""The findings vocabulary: every term is named by its own word, every word names a term, and the writers, the
checker and SynthDerm speak the same vocabulary."""

from __future__ import annotations

import re

import pytest

from mmcore import findings
from mmcore.cases import DX_CLASSES, MALIGNANCY
from mmcore.fidelity import CATEGORY_TERMS, MALIGNANCY_TERMS, read_note
from mmcore.findings import (
    ASYMMETRY,
    ASYMMETRY_TERMS,
    BORDER_TERMS,
    BORDERS,
    COLOUR_TERMS,
    COLOURS,
    DX_HIERARCHY,
    FEATURE_TERMS,
    FEATURES,
    NETWORK_TERMS,
    NETWORKS,
    STRUCTURE_TERMS,
    STRUCTURES,
    VESSEL_FEATURES,
)

TABLES = {
    "colour": (COLOURS, COLOUR_TERMS),
    "structure": (STRUCTURES, STRUCTURE_TERMS),
    "feature": (FEATURES, FEATURE_TERMS),
    "network": (NETWORKS, NETWORK_TERMS),
    "border": (BORDERS, BORDER_TERMS),
}


def test_the_vocabulary_is_the_one_design_names():
    assert COLOURS == ("white", "red", "light brown", "dark brown", "blue-grey", "black")
    assert BORDERS == ("sharp", "indistinct", "mixed")
    assert {"pigment network", "dots", "globules", "streaks", "vessels", "blue-white veil", "regression"} <= set(
        STRUCTURES
    )
    assert sorted(ASYMMETRY) == [0, 1, 2]
    for terms in (COLOURS, BORDERS, STRUCTURES, FEATURES, NETWORKS):
        assert len(set(terms)) == len(terms)
    assert not set(STRUCTURES) & set(FEATURES)  # a finding is a structure or a feature, never both


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_word_names_a_term_and_every_term_has_its_own_word(kind):
    terms, words = TABLES[kind]
    named = set(words.values())
    assert named - set(terms) <= ({"brown"} if kind == "colour" else set())  # "brown": light or dark, either
    if kind in ("border", "network"):  # a bare "sharp" or "regular" names nothing: these words are phrases
        assert named == set(terms)
    else:
        assert all(words[t] == t for t in terms), [t for t in terms if words.get(t) != t]


def test_asymmetry_names_read_back_to_their_number_of_axes():
    for axes, name in ASYMMETRY.items():
        assert ASYMMETRY_TERMS[name] == str(axes)
    assert set(ASYMMETRY_TERMS.values()) == {"0", "1", "2", "any"}


def test_no_word_means_two_findings():
    key = {}
    for kind, (_, words) in {**TABLES, "asymmetry": (None, ASYMMETRY_TERMS)}.items():
        for word in words:
            normal = re.sub(r"[\s\-]+", " ", word.lower())
            assert normal not in key or key[normal] == (kind, words[word]), (word, key.get(normal), kind)
            key[normal] = (kind, words[word])


def test_the_checker_reads_each_term_as_itself():
    for kind, (terms, _) in TABLES.items():
        for term in terms:
            phrase = f"{term} border" if kind == "border" else f"{term} network" if kind == "network" else term
            claims = [c for c in read_note(phrase) if c.kind == kind]
            assert [c.value for c in claims] == [term], (kind, term, claims)


def test_vessel_features_are_features_that_name_vessels():
    assert {f for f in FEATURES if f.endswith("vessels")} == VESSEL_FEATURES


def test_the_hierarchy_agrees_with_the_case_schema_and_the_checker():
    assert set(DX_HIERARCHY) == set(DX_CLASSES)
    for dx, (lineage, malignancy) in DX_HIERARCHY.items():
        assert MALIGNANCY_TERMS[malignancy] == MALIGNANCY[dx], dx
        if lineage in CATEGORY_TERMS:  # where the checker reads the lineage as a category, it allows this class
            assert dx in CATEGORY_TERMS[lineage], dx


def test_the_note_writers_word_exactly_the_vocabulary():
    from mmcore import notes

    assert set(notes.COLOUR_WORDS) == set(COLOURS)
    assert set(notes.STRUCTURE_WORDS) == set(STRUCTURES)
    assert set(notes.FEATURE_WORDS) == set(FEATURES)
    assert set(notes.NETWORK_WORDS) == set(NETWORKS)
    assert set(notes.BORDER_WORDS) == set(BORDERS)
    assert set(notes.ASYMMETRY_WORDS) == set(ASYMMETRY)


def test_the_vocabulary_has_one_home():
    """notes, llm, fidelity and SynthDerm use findings' objects, not copies of their own."""
    from mmcore import fidelity, llm, notes
    from mmcore.synthderm import dataset, priors

    assert notes.COLOURS is COLOURS and notes.STRUCTURES is STRUCTURES and notes.DX_HIERARCHY is DX_HIERARCHY
    assert llm.COLOURS is COLOURS and llm.BORDERS is BORDERS and llm.ASYMMETRY is ASYMMETRY
    assert fidelity.COLOUR_TERMS is COLOUR_TERMS and fidelity.FEATURE_TERMS is FEATURE_TERMS
    assert dataset.COLOURS is COLOURS and dataset.FEATURES is FEATURES and priors.BORDERS is BORDERS
    assert not hasattr(fidelity, "COLOURS") and not hasattr(notes, "HIERARCHY")
    assert findings.__doc__
