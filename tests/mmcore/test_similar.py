"""Similar cases as pages show them: index hits turned into cases in order, a case deleted since the index was built
skipped, the percentile carried through."""

from __future__ import annotations

from mmcore.cases import CaseStore
from mmcore.index import Hit
from mmcore.similar import load_similar_cases


def test_hits_become_cases_in_order_and_deleted_ones_are_skipped(synth_home):
    with CaseStore(synth_home) as store:
        cases = store.cases(with_notes=True)[:3]
        hits = [Hit(c.case_id, 0.9 - i / 10, 0.1 + i / 10, {}, 99.0 - i) for i, c in enumerate(cases)]
        hits.insert(1, Hit("synthderm:gone", 0.85, 0.15, {}, 98.0))  # deleted since the index was built
        found = load_similar_cases(store, hits, "image")
    assert [f.case_id for f in found] == [c.case_id for c in cases]
    first = found[0]
    assert first.percentile == 99.0 and first.score == 0.9 and first.modality == "image"
    assert first.name and first.image_path is not None and first.image_path.is_file()
    assert set(first.notes) == {"M", "P1", "P2", "P3", "clinical"}
    assert {"age", "sex", "site", "fitzpatrick", "source", "domain", "split"} == set(first.metadata)
