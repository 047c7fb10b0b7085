"""Filters on case metadata for retrieval: typed arguments (`CaseFilter`, what a page's widgets give) or a simple
dict, parsed once into conditions with two back ends that agree: Chroma's `where` and NumPy masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Metadata kept per case in the index. Unknown values (age, sex or Fitzpatrick type None, domain or split "") are
# left out, because Chroma metadata cannot hold None: a filter on a field therefore never matches a case whose value
# is unknown (an age range never admits a case of unknown age). The site vocabulary has its own value "unknown".
METADATA_FIELDS = ("case_id", "dx", "malignancy", "site", "age", "sex", "fitzpatrick", "source", "domain", "split")
NUMBER_FIELDS = frozenset({"age", "fitzpatrick"})  # stored as float and int; the rest are strings
_COMPARE = {"$gte": np.greater_equal, "$lte": np.less_equal, "$gt": np.greater, "$lt": np.less}
AGE_RANGE = (0, 100)  # a range spanning this much is no constraint


class FilterError(ValueError):
    """A filter names an unknown field or has a value of the wrong shape; the message says which."""


@dataclass(frozen=True)
class CaseFilter:
    """What a clinician can restrict a search to; empty fields constrain nothing."""

    dx: tuple[str, ...] = ()
    site: tuple[str, ...] = ()
    sex: tuple[str, ...] = ()
    fitzpatrick: tuple[int, ...] = ()
    domain: tuple[str, ...] = ()
    source: str = ""
    age: tuple[float, float] | None = None  # inclusive; None or the whole AGE_RANGE: any age, unknown included

    def to_dict(self) -> dict[str, Any]:
        """The simple filter dict parse_filters reads (and the index's `where`)."""
        where: dict[str, Any] = {}
        for key in ("dx", "site", "sex", "fitzpatrick", "domain"):
            values = getattr(self, key)
            if values:
                where[key] = list(values)
        if self.source.strip():
            where["source"] = self.source.strip()
        if self.age is not None and tuple(self.age) != AGE_RANGE:
            where["age"] = {"$gte": float(self.age[0]), "$lte": float(self.age[1])}
        return where


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # $eq | $in | $gte | $lte | $gt | $lt
    value: Any


def parse_filters(filters: CaseFilter | Mapping[str, Any] | None) -> list[Condition]:
    """Conditions from a CaseFilter (the pages' filter) or a simple dict, ANDed together; a None value means no
    constraint on that field.

    Each field takes a value, a list of values (any of), or operators as in Chroma: {"$in": [...]}, {"$eq": v},
    and on the numbers age and fitzpatrick the ranges {"$gte", "$lte", "$gt", "$lt"}. For example
    {"dx": ["mel", "bcc"], "age": {"$gte": 40, "$lte": 70}, "sex": "male", "fitzpatrick": [5, 6]}.
    """
    if isinstance(filters, CaseFilter):
        filters = filters.to_dict()
    conditions: list[Condition] = []
    for key, value in (filters or {}).items():
        if key not in METADATA_FIELDS:
            raise FilterError(f"cannot filter by {key!r}; filters: {', '.join(METADATA_FIELDS)}")
        if value is None:
            continue
        ops = dict(value) if isinstance(value, Mapping) else {"$in" if _is_list(value) else "$eq": value}
        if not ops:
            raise FilterError(f"filter {key}: no operator in {{}}")
        for op, operand in ops.items():
            allowed = ("$eq", "$in", *_COMPARE) if key in NUMBER_FIELDS else ("$eq", "$in")
            if op not in allowed:
                raise FilterError(f"filter {key}: {op!r} is not one of {', '.join(allowed)}")
            if op == "$in":
                if not _is_list(operand) or not operand:
                    raise FilterError(f"filter {key}: $in needs a non-empty list, got {operand!r}")
                conditions.append(Condition(key, op, sorted({_typed(key, v) for v in operand})))
            else:
                conditions.append(Condition(key, op, _typed(key, operand)))
    return conditions


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | set)


def _typed(key: str, value: Any) -> str | int | float:
    """A filter value in its field's stored type; a string for a number (or the reverse) is an error, not a miss."""
    if key not in NUMBER_FIELDS:
        if not isinstance(value, str):
            raise FilterError(f"filter {key}: {value!r} is not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FilterError(f"filter {key}: {value!r} is not a number")
    if key == "fitzpatrick":
        if value != int(value):
            raise FilterError(f"filter fitzpatrick: {value!r} is not a whole number")
        return int(value)
    return float(value)


def build_where(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The Chroma `where` for a simple filter dict (None when it constrains nothing)."""
    return chroma_where(parse_filters(filters))


def chroma_where(conditions: Sequence[Condition]) -> dict[str, Any] | None:
    clauses = [{c.field: {c.op: c.value}} for c in conditions]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def filter_mask(
    conditions: Sequence[Condition], columns: Mapping[str, np.ndarray], vocab: Mapping[str, Mapping[str, int]]
) -> np.ndarray:
    """(N,) bool: the rows every condition admits; unknown values (code -1, NaN) are never admitted.

    columns: field -> (N,) float64 for numbers (NaN unknown), int32 codes into vocab[field] for text (-1 unknown).
    """
    mask = np.ones(len(next(iter(columns.values()))) if columns else 0, dtype=bool)
    for c in conditions:
        col = columns[c.field]
        if c.op not in ("$in", "$eq"):  # a range on a number; NaN compares False
            mask &= _COMPARE[c.op](col, c.value)
            continue
        values = c.value if c.op == "$in" else [c.value]
        if c.field not in NUMBER_FIELDS:  # text is held as codes into the field's vocabulary; -2 matches nothing
            values = [vocab[c.field].get(v, -2) for v in values]
        mask &= np.logical_or.reduce([col == v for v in values])  # a few equalities: 10x faster than np.isin
    return mask
