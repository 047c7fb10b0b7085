"""The demo on the tiny preset: an empty home gets data, a trained, evaluated, indexed and promoted model; a second
run does nothing."""

from __future__ import annotations

import json

import pytest
import torch

from mmcore.audit import AuditLog
from mmcore.cases import CaseStore
from mmcore.cli import main
from mmcore.config import load_config
from mmcore.demo import promote_version
from mmcore.index import close_indexes
from mmcore.model_store import active_version, list_versions, read_metadata


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    close_indexes()  # the demo opened this process's index; release its lock


def test_demo_builds_everything_once_and_is_idempotent(home, capsys, one_thread):
    argv = ["demo", "--config", "tiny", "--n", "48", "--set", "runtime.threads=1", "--json"]
    assert main(argv) == 0
    built = json.loads(capsys.readouterr().out)
    version = built["version"]
    assert built["status"] == "built" and active_version(home) == version
    assert built["cases"] == 48 and built["embedded"] == 48
    assert {"fused", "image", "text", "chance", "majority_rate"} <= set(built["test"])
    assert built["test"]["chance"] == pytest.approx(1 / 7)
    with CaseStore(home) as store:
        for modality in ("image", "text"):
            ids, vectors = store.get_embeddings(version, modality)
            assert len(ids) == 48 and vectors.shape == (48, 16)
    assert built.get("indexed_image") == 48 and built.get("indexed_text") == 48
    assert "test_clinical" in read_metadata(home, version)["evaluation"]
    assert AuditLog(home / "audit.jsonl").read(event="promote")[-1]["version"] == version

    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {"status": "exists", "version": version, "home": str(home)}
    assert list_versions(home) == [version]
    with CaseStore(home) as store:
        assert store.count() == 48


def test_promote_version_builds_the_index_before_the_version_goes_active(home, capsys, one_thread):
    assert main(["demo", "--config", "tiny", "--n", "40", "--set", "runtime.threads=1", "--json"]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    (home / "models" / "active").unlink()
    steps = []
    counts = promote_version(load_config("tiny"), version, progress=lambda f, text: steps.append((f, text)))
    assert counts["embedded"] == 40 and counts["indexed_image"] == counts["indexed_text"] == 40
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and "active" in steps[-1][1]
    assert active_version(home) == version
