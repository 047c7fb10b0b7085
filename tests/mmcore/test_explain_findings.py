"""Findings through a Predictor on the tiny demo home: the probe fitted at the end of training and stored hashed with
the version, the scores of a photo, the map of one finding, and similar cases by findings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmcore.cases import CaseStore
from mmcore.concepts import FINDING_NAMES, META_FILE, WEIGHTS_FILE, fit_findings, load_findings_probe, refit_findings
from mmcore.config import Config, load_config
from mmcore.explain_findings import explain_finding, findings_query_vector, score_findings, similar_by_findings
from mmcore.model_store import TamperedModelError, active_version, load_version, verify_version
from mmcore.predictor import Predictor


@pytest.fixture
def cfg(tiny_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A private copy of the tiny demo home (fitting writes into its version) with the findings probe fitted."""
    home = tmp_path / "home"
    shutil.copytree(tiny_home, home, ignore=shutil.ignore_patterns("*.lock", "jobs"))
    monkeypatch.setenv("MMDERM_HOME", str(home))
    cfg = load_config(None, env={"MMDERM_HOME": str(home)})
    assert fit_findings(cfg, load_version(cfg)) is not None
    return cfg


def _photo(cfg: Config, index: int = 0) -> bytes:
    with CaseStore(cfg.home) as store:
        case = store.cases(split="test")[index]
        return (store.home / case.image_path).read_bytes()


def test_the_probe_is_stored_hashed_and_used_by_the_predictor(cfg):
    version = active_version(cfg)
    card = verify_version(cfg, version)  # every recorded hash, the probe's files included
    assert {WEIGHTS_FILE, META_FILE} <= set(card.files)
    summary = card.extra["findings"]
    assert summary["probed"] and set(summary["probed"]) | set(summary["zero_shot_only"]) == set(FINDING_NAMES)

    predictor = Predictor.from_config(cfg)
    scores = score_findings(predictor, _photo(cfg))
    assert [s.name for s in scores] == list(FINDING_NAMES)
    assert all(0.0 <= s.score <= 1.0 for s in scores)
    assert {s.name for s in scores if s.calibrated} == set(summary["probed"])
    # A calibrated score is the stored probe's logistic of the photo's shared-space embedding.
    probe = load_findings_probe(cfg.models_dir / version)
    embed = predictor.embed(_photo(cfg))["image"]
    j = probe.names.index(summary["probed"][0])
    expected = 1 / (1 + np.exp(-(embed @ probe.weights[j] + probe.bias[j])))
    assert next(s for s in scores if s.name == probe.names[j]).score == pytest.approx(float(expected), rel=1e-5)

    assert refit_findings(cfg, version) is not None  # refitting rewrites and re-hashes the files
    verify_version(cfg, version)


def test_a_probe_edited_after_fitting_is_refused(cfg):
    path = cfg.models_dir / active_version(cfg) / META_FILE
    meta = json.loads(path.read_text())
    meta["names"] = list(reversed(meta["names"]))  # the weights would score the wrong findings
    path.write_text(json.dumps(meta))
    with pytest.raises(TamperedModelError, match="findings.json"):
        load_version(cfg)


def test_a_findings_map_is_the_photos_and_the_findings_own(cfg):
    predictor = Predictor.from_config(cfg)
    photo = _photo(cfg)
    names = load_findings_probe(cfg.models_dir / predictor.version).names
    first = explain_finding(predictor, photo, names[0])
    assert first.target == names[0] and first.model_version == predictor.version
    assert first.heatmap.shape == first.image.size[::-1] and 0.0 <= first.heatmap.min() <= first.heatmap.max() <= 1.0
    assert not first.heatmap.flags.writeable  # cached and shared between sessions
    assert first.overlay(0.5).size == first.image.size and first.colorbar().size[0] > 0
    assert explain_finding(predictor, photo, names[0]) is first
    maps = [explain_finding(predictor, photo, n).heatmap for n in names]
    assert any(not np.allclose(maps[0], m) for m in maps[1:])  # each finding its own map
    with pytest.raises(ValueError, match="unknown finding"):
        explain_finding(predictor, photo, "sunburn")


def test_the_cli_queries_by_findings_and_names_the_vocabulary_on_a_typo(cfg, capsys):
    import json

    from mmcore.commands import main

    names = ["dark brown", "pigment network"]
    argv = ["index", "query", "--findings", " dark brown, pigment network ", "--k", "5", "--json"]
    assert main([*argv, "--where", '{"dx": ["nv", "mel"]}']) == 0  # first: the CLI opens the local index itself
    hits = json.loads(capsys.readouterr().out)["hits"]
    expected = similar_by_findings(Predictor.from_config(cfg), names, k=5, where={"dx": ["nv", "mel"]})
    assert [h["case_id"] for h in hits] == [c.case_id for c in expected] and len(hits) == 5
    for bad, message in [
        (["index", "query", "--findings", "dark brwn"], "unknown finding 'dark brwn': choose from asymmetry,"),
        (["index", "query", "--findings", "streaks", "--text", "a note"], "--findings searches the image index"),
    ]:
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_similar_by_findings_returns_the_cases_nearest_the_findings_direction(cfg):
    predictor = Predictor.from_config(cfg)
    names = ["dark brown", "pigment network"]
    query = findings_query_vector(predictor, names)
    assert query.shape == (predictor.card.heads["embed_dim"],) and np.linalg.norm(query) == pytest.approx(1.0)
    found = similar_by_findings(predictor, names, k=5)
    with CaseStore(cfg.home) as store:
        ids, vectors = store.get_embeddings(predictor.version, "image")
    expected = [ids[i] for i in np.argsort(-(vectors @ query), kind="stable")[:5]]
    assert [c.case_id for c in found] == expected
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
