"""The demo on the tiny preset: an empty home gets data and a trained, evaluated, indexed and promoted model; a
second run does nothing."""

from __future__ import annotations

import json

import pytest
import torch

from mmcore.audit import AuditLog
from mmcore.cases import CaseStore
from mmcore.commands import main
from mmcore.index import close_indexes
from mmcore.model_store import active_version, list_versions, read_card


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
    assert built["cases"] == 48 and built["indexed"] == {"image": 48, "text": 48}
    assert {"fused", "image", "text"} <= set(built["test"]) and built["test"]["strategy"] == "clinical"
    assert built["trained_on"].startswith("SynthDerm: procedurally drawn lesions, not real photographs")
    with CaseStore(home) as store:
        for modality in ("image", "text"):
            ids, vectors = store.get_embeddings(version, modality)
            assert len(ids) == 48 and vectors.shape == (48, 16)
    card = read_card(home, version)
    assert card.evaluated and "test_clinical" in card.evaluations
    assert card.training_data.train.fitzpatrick and card.training_data.train.site  # the few-cases warning's counts
    promotions = AuditLog(home / "audit.jsonl").read(event="promote")
    assert [(e["model_version"], e["user"]) for e in promotions] == [(version, "demo")]

    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {"status": "exists", "version": version, "home": str(home)}
    assert list_versions(home) == [version]
    with CaseStore(home) as store:
        assert store.count() == 48
