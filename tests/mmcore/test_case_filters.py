"""Filters on case metadata: the dict form parsed into conditions, Chroma's `where` and NumPy masks agreeing, and the
typed CaseFilter the pages build."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.case_filters import CaseFilter, FilterError, build_where, filter_mask, parse_filters


def test_where_from_simple_filters_and_clear_errors():
    assert build_where({"dx": "mel", "age": {"$gte": 40}}) == {"$and": [{"dx": {"$eq": "mel"}},
                                                                        {"age": {"$gte": 40.0}}]}  # fmt: skip
    assert build_where({"fitzpatrick": [2, 1.0]}) == {"fitzpatrick": {"$in": [1, 2]}}
    assert build_where({"sex": None}) is None
    for bad, message in [
        ({"colour": "red"}, "cannot filter by 'colour'"),
        ({"dx": {"$gte": "mel"}}, "'$gte' is not one of $eq, $in"),
        ({"dx": []}, "non-empty list"),
        ({"age": "old"}, "not a number"),
        ({"fitzpatrick": 2.5}, "not a whole number"),
    ]:
        with pytest.raises(FilterError, match=message.replace("$", r"\$")):
            build_where(bad)


def test_masks_admit_exactly_the_rows_the_conditions_name():
    columns = {
        "age": np.array([30.0, 55.0, np.nan, 70.0]),
        "dx": np.array([0, 1, 0, -1], dtype=np.int32),  # codes into the vocabulary; -1 unknown
        "fitzpatrick": np.array([1.0, 2.0, 6.0, np.nan]),
    }
    vocab = {"dx": {"mel": 0, "nv": 1}}
    mask = filter_mask(parse_filters({"dx": "mel", "age": {"$gte": 25}}), columns, vocab)
    assert mask.tolist() == [True, False, False, False]  # unknown ages never pass a range
    assert filter_mask(parse_filters({"dx": ["bcc"]}), columns, vocab).tolist() == [False] * 4  # unseen value
    assert filter_mask(parse_filters({"fitzpatrick": [1, 6]}), columns, vocab).tolist() == [True, False, True, False]


def test_an_empty_case_filter_constrains_nothing():
    assert CaseFilter().to_dict() == {} and build_where(CaseFilter().to_dict()) is None
    with pytest.raises(FilterError):
        build_where(CaseFilter(fitzpatrick=("II",)).to_dict())  # a number field given text
