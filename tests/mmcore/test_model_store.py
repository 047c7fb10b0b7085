"""Model versions: round trip, hashes, tampering, the card, the one promotion path, the `models` CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from mmcore import model_store
from mmcore.audit import AuditLog
from mmcore.cases import DX_CLASSES
from mmcore.commands import main
from mmcore.config import Config, load_config
from mmcore.model import MultimodalModel, build_model
from mmcore.model_card import INTENDED_USE, DataSummary, Evaluation, ModelCard, TrainingData
from mmcore.model_store import (
    ModelStoreError,
    PromotionRefused,
    TamperedModelError,
    active_version,
    add_files,
    list_versions,
    load_version,
    load_weights,
    promote,
    read_card,
    save_version,
    save_weights,
    update_card,
    verify_version,
)

NOTES = ["asymmetric pigmented lesion with blue-grey veil", "pink nodule with arborizing vessels"]


@pytest.fixture
def cfg(home) -> Config:
    return dataclasses.replace(load_config("tiny", env={}), home=home)


def _model(cfg: Config, **changes) -> MultimodalModel:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(cfg.model, **changes), DX_CLASSES, texts=NOTES).eval()


def _logits(model: MultimodalModel) -> torch.Tensor:
    torch.manual_seed(1)
    images = torch.randn(2, 3, model.image_spec.image_size, model.image_spec.image_size)
    with torch.no_grad():
        return model(images, **model.tokenize(NOTES)).fused_logits


@pytest.mark.parametrize("changes", [{}, {"text_encoder": "bilstm_attn", "fusion": "gated"}])
def test_round_trip_gives_identical_logits(cfg, changes):
    model = _model(cfg, **changes)
    version = save_version(model, cfg)
    loaded = load_version(cfg, version, device="cpu")
    assert loaded.version == version and loaded.model.classes == DX_CLASSES
    assert loaded.cfg.model == model.cfg and loaded.cfg.home == cfg.home
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model), _logits(model))  # the bilstm reloads without the notes


def test_version_folder_describes_itself(cfg):
    card = ModelCard(training_data=TrainingData(train=DataSummary(n=70, source={"synthderm": 70})))
    version = save_version(_model(cfg), cfg, card)
    assert version.startswith("v0001-")
    folder = cfg.models_dir / version
    assert {"model.safetensors", "config.toml", "labels.json", "metadata.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    card = json.loads((folder / "metadata.json").read_text())
    assert card["version"] == version and card["intended_use"] == INTENDED_USE
    assert card["encoders"]["image"]["name"] == "tiny_cnn" and card["encoders"]["image"]["pretrained"] is False
    assert card["input_spec"]["image"]["size"] == [32, 32] and card["input_spec"]["text"]["max_length"] == 32
    assert card["training_data"]["train"]["n"] == 70 and card["evaluations"] == {} and card["schema"] == 2
    assert card["trained_on"].startswith("SynthDerm: procedurally drawn lesions, not real photographs (70 training")
    assert json.loads((folder / "labels.json").read_text()) == list(DX_CLASSES)
    assert set(card["files"]) == {p.name for p in folder.iterdir()} - {"metadata.json"}
    assert card["files"]["tokenizer.json"] == model_store.sha256_file(folder / "tokenizer.json")
    assert ModelCard.from_dict(card) == read_card(cfg, version)  # the typed card round-trips


def test_versions_are_numbered_and_none_is_active_until_promoted(cfg):
    with pytest.raises(ModelStoreError, match="no active model"):
        load_version(cfg)
    first = save_version(_model(cfg), cfg)
    second = save_version(_model(cfg), cfg)
    assert list_versions(cfg) == [first, second] and second.startswith("v0002-")
    assert active_version(cfg) is None
    with pytest.raises(ModelStoreError, match="no model version"):
        promote(cfg, "v0099-20250101T000000Z", "tester")
    with pytest.raises(ModelStoreError, match="not a model version name"):
        load_version(cfg, "../../etc")


def _flip_a_byte(path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.toml"])
def test_a_tampered_file_is_refused(cfg, name):
    version = save_version(_model(cfg), cfg)
    _flip_a_byte(cfg.models_dir / version / name, offset=-100 if name == "model.safetensors" else 5)
    with pytest.raises(TamperedModelError, match=f"{name}: SHA-256 mismatch"):
        load_version(cfg, version)
    with pytest.raises(TamperedModelError):
        verify_version(cfg, version)
    with pytest.raises(TamperedModelError):
        promote(cfg, version, "tester", allow_unevaluated=True)  # never promoted either
    assert active_version(cfg) is None


def test_loading_never_unpickles_nor_reads_pretrained_files(cfg, monkeypatch):
    version = save_version(_model(cfg), cfg)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called while loading a model version")

    monkeypatch.setattr(torch, "load", refuse)
    assert load_version(cfg, version).version == version


def test_update_card_keeps_the_other_fields_and_refuses_to_touch_files(cfg):
    version = save_version(_model(cfg), cfg)
    update_card(cfg, version, lambda c: c.evaluations.__setitem__("val_P1", Evaluation(split="val", n=5)))
    card = update_card(cfg, version, lambda c: c.evaluations.__setitem__("test_clinical", Evaluation(n=7)))
    assert set(card.evaluations) == {"val_P1", "test_clinical"} and card.evaluated
    assert load_version(cfg, version).card.evaluations["test_clinical"].n == 7
    with pytest.raises(ValueError, match="written by the model store"):
        update_card(cfg, version, lambda c: c.files.pop("config.toml"))
    assert "config.toml" in read_card(cfg, version).files


def test_files_added_later_are_hashed_and_checked(cfg):
    version = save_version(_model(cfg), cfg)
    extra = cfg.models_dir / version / "ood.json"
    extra.write_text('{"threshold": 1.0}')
    add_files(cfg, version, ["ood.json"])
    assert verify_version(cfg, version).files["ood.json"] == model_store.sha256_file(extra)
    extra.write_text('{"threshold": 99.0}')
    with pytest.raises(TamperedModelError, match="ood.json: SHA-256 mismatch"):
        load_version(cfg, version)
    with pytest.raises(ValueError):
        add_files(cfg, version, ["../config.toml"])


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.decoder = nn.Linear(4, 4)
            self.decoder.weight = self.encoder.weight

    torch.manual_seed(0)
    source, target = Tied(), Tied()
    save_weights(source, tmp_path / "w.safetensors")
    load_weights(target, (tmp_path / "w.safetensors").read_bytes())
    torch.testing.assert_close(target.decoder.weight, source.encoder.weight)
    assert target.decoder.weight is target.encoder.weight  # still tied
    from safetensors import safe_open

    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["decoder.bias", "encoder.bias", "encoder.weight"]


def test_models_cli_lists_shows_and_verifies(cfg, capsys):
    version = save_version(_model(cfg), cfg)

    def run(*argv: str) -> tuple[int, str]:
        code = main(["models", *argv, "--config", "tiny", "--json"])
        return code, capsys.readouterr().out

    code, out = run("list")
    assert code == 0 and json.loads(out)["versions"][0]["version"] == version
    code, out = run("show", version)
    assert code == 0 and json.loads(out)["intended_use"] == INTENDED_USE
    code, out = run("verify")
    assert code == 0 and json.loads(out)["ok"] is True
    _flip_a_byte(cfg.models_dir / version / "model.safetensors")
    code, out = run("verify", version)
    assert code == 1 and "SHA-256 mismatch" in json.loads(out)["versions"][0]["reason"]
    assert main(["models", "promote", "v0042-20250101T000000Z", "--config", "tiny"]) == 2
    assert "no model version" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_round_trip_builds_architectures_without_pretrained_files(cfg, monkeypatch):
    """efficientnet_lite0 + minilm: saved, then rebuilt from the version folder alone and loaded from safetensors."""
    from transformers import AutoModel

    from mmcore import image_encoders

    cfg = dataclasses.replace(cfg, model=load_config("default", env={}).model)
    model = build_model(cfg.model, DX_CLASSES).eval()
    version = save_version(model, cfg)
    card = json.loads((cfg.models_dir / version / "metadata.json").read_text())
    assert card["encoders"]["image"]["pretrained"] is True and card["encoders"]["text"]["pretrained"] is True

    def refuse(*args, **kwargs):
        raise AssertionError("a pretrained file was read while loading a saved version")

    monkeypatch.setattr(image_encoders, "load_imagenet_state", refuse)
    monkeypatch.setattr(AutoModel, "from_pretrained", refuse)
    loaded = load_version(cfg, version, device="cpu")
    assert loaded.model.image_encoder.pretrained is True  # the card's facts survive the reload
    images = torch.randn(1, 3, 224, 224)
    text = model.tokenize(["pigmented lesion on the back"])
    with torch.no_grad():
        assert torch.equal(loaded.model(images, **text).fused_logits, model(images, **text).fused_logits)


# ---- promotion: embed every case, build the index, activate, audit (one path for CLI, page and demo) ----


@pytest.fixture
def store_cfg(synth_home) -> Config:
    return dataclasses.replace(load_config("tiny", env={}), home=synth_home)


@pytest.fixture
def closing_indexes():
    from mmcore.index import close_indexes

    yield
    close_indexes()  # promotion opened this process's index; release its lock


def test_promote_refuses_an_unevaluated_version_unless_told(store_cfg, closing_indexes):
    version = save_version(_model(store_cfg), store_cfg)
    with pytest.raises(PromotionRefused, match="no test evaluation"):
        promote(store_cfg, version, "alice")
    assert active_version(store_cfg) is None
    steps, stages = [], []

    def progress(fraction: float, text: str, *, stage: str = "", done: int | None = None, total: int | None = None):
        steps.append(fraction)
        stages.append((stage, done, total))

    result = promote(store_cfg, version, "alice", progress=progress, allow_unevaluated=True)
    assert active_version(store_cfg) == version and result.previous is None
    # each stage reports its own counts by keyword (what the Admin page's bar and ETA are drawn from)
    assert ("embedding images", 84, 84) in stages and ("embedding notes", 84, 84) in stages
    assert ("indexing", 168, 168) in stages and stages[0][0] == "loading" and stages[-1][0] == "done"
    assert result.indexed == {"image": 84, "text": 84} and result.embedded.embedded == {"image": 84, "text": 84}
    assert steps == sorted(steps) and steps[-1] == 1.0
    entries = AuditLog(store_cfg.audit_path).read(event="promote")
    assert len(entries) == 1 and entries[0]["user"] == "alice" and entries[0]["model_version"] == version
    assert entries[0]["unevaluated"] is True and entries[0]["indexed_image"] == 84
    again = promote(store_cfg, version, "alice", allow_unevaluated=True)  # resumable: nothing left to embed
    assert again.embedded.embedded == {"image": 0, "text": 0} and again.indexed == {"image": 84, "text": 84}


def test_cases_without_notes_are_indexed_by_image_and_notes_prefer_clinical(store_cfg, closing_indexes):
    from mmcore.cases import CaseStore

    with CaseStore(store_cfg.home) as store:
        ids = sorted(c.case_id for c in store.cases())
        for strategy in ("M", "P1", "P2", "P3", "clinical"):
            store.delete_notes(ids[:10], strategy)
    version = save_version(_model(store_cfg), store_cfg)
    result = promote(store_cfg, version, "alice", allow_unevaluated=True)
    assert result.indexed == {"image": 84, "text": 74} and result.embedded.without_note == 10
    assert result.embedded.notes_by_strategy == {"clinical": 74}


def test_promote_refuses_an_empty_case_store(cfg, closing_indexes):
    version = save_version(_model(cfg), cfg)
    with pytest.raises(PromotionRefused, match="empty"):
        promote(cfg, version, "alice", allow_unevaluated=True)
    assert active_version(cfg) is None


def test_rollback_promotes_the_previous_version_through_the_same_path(store_cfg, capsys, closing_indexes):
    first = save_version(_model(store_cfg), store_cfg)
    second = save_version(_model(store_cfg), store_cfg)
    for version in (first, second):
        assert main(["models", "promote", version, "--allow-unevaluated", "--config", "tiny"]) == 0
    assert active_version(store_cfg) == second
    assert main(["models", "rollback", "--allow-unevaluated", "--config", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["active"] == first and out["previous"] == second and active_version(store_cfg) == first
    last = AuditLog(store_cfg.audit_path).read(event="promote")[-1]
    assert last["rollback"] is True and last["user"].startswith("os:")
