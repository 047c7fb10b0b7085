"""Model versions: round trip, hashes, tampering, promotion, metadata, the `models` CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from mmcore import model_store
from mmcore.cases import DX_CLASSES
from mmcore.cli import main
from mmcore.config import Config, load_config
from mmcore.model import MultimodalModel, build_model
from mmcore.model_store import (
    INTENDED_USE,
    ModelStoreError,
    TamperedModelError,
    active_version,
    list_versions,
    load_version,
    load_weights,
    save_version,
    save_weights,
    set_active,
    update_metadata,
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
    version = save_version(model, cfg, {"training_data": {"cases": 70}})
    loaded = load_version(cfg, version, device="cpu")
    assert loaded.version == version and loaded.model.classes == DX_CLASSES
    assert loaded.cfg.model == model.cfg and loaded.cfg.home == cfg.home
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model), _logits(model))  # the bilstm reloads without the notes


def test_version_folder_describes_itself(cfg):
    version = save_version(_model(cfg), cfg, {"training_data": {"cases": 70}})
    assert version.startswith("v0001-")
    folder = cfg.models_dir / version
    assert {"model.safetensors", "config.toml", "labels.json", "metadata.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    card = json.loads((folder / "metadata.json").read_text())
    assert card["version"] == version and card["intended_use"] == INTENDED_USE
    assert card["encoders"]["image"]["name"] == "tiny_cnn" and card["encoders"]["image"]["pretrained"] is False
    assert card["input_spec"]["image"]["size"] == [32, 32] and card["input_spec"]["text"]["max_length"] == 32
    assert card["training_data"] == {"cases": 70} and card["metrics"] == {}
    assert json.loads((folder / "labels.json").read_text()) == list(DX_CLASSES)
    assert set(card["files"]) == {p.name for p in folder.iterdir()} - {"metadata.json"}
    assert card["files"]["tokenizer.json"] == model_store.sha256_file(folder / "tokenizer.json")
    with pytest.raises(ValueError, match="written by the model store"):
        save_version(_model(cfg), cfg, {"files": {}})


def test_versions_are_numbered_and_one_is_active(cfg):
    with pytest.raises(ModelStoreError, match="no active model"):
        load_version(cfg)
    first = save_version(_model(cfg), cfg, {})
    second = save_version(_model(cfg), cfg, {})
    assert list_versions(cfg) == [first, second] and second.startswith("v0002-")
    assert active_version(cfg) is None
    set_active(cfg, first)
    assert active_version(cfg) == first and active_version(cfg.home) == first
    assert load_version(cfg.home).version == first
    with pytest.raises(ModelStoreError, match="no model version"):
        set_active(cfg, "v0099-20250101T000000Z")
    with pytest.raises(ModelStoreError, match="not a model version name"):
        load_version(cfg, "../../etc")


def _flip_a_byte(path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.toml"])
def test_a_tampered_file_is_refused(cfg, name):
    version = save_version(_model(cfg), cfg, {})
    _flip_a_byte(cfg.models_dir / version / name, offset=-100 if name == "model.safetensors" else 5)
    with pytest.raises(TamperedModelError, match=f"{name}: SHA-256 mismatch"):
        load_version(cfg, version)
    with pytest.raises(TamperedModelError):
        verify_version(cfg, version)
    with pytest.raises(TamperedModelError):
        set_active(cfg, version)  # never promoted either


def test_loading_never_unpickles_nor_reads_pretrained_files(cfg, monkeypatch):
    version = save_version(_model(cfg), cfg, {})

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called while loading a model version")

    monkeypatch.setattr(torch, "load", refuse)
    assert load_version(cfg, version).version == version


def test_update_metadata_merges_metrics(cfg):
    version = save_version(_model(cfg), cfg, {})
    update_metadata(cfg, version, metrics={"val": {"accuracy": 0.5}})
    card = update_metadata(cfg, version, metrics={"test": {"accuracy": 0.4}}, notes="smoke run")
    assert card["metrics"] == {"val": {"accuracy": 0.5}, "test": {"accuracy": 0.4}} and card["notes"] == "smoke run"
    assert load_version(cfg, version).metadata["metrics"]["test"] == {"accuracy": 0.4}
    with pytest.raises(ValueError):
        update_metadata(cfg, version, files={})


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


def test_models_cli_lists_shows_promotes_and_verifies(cfg, capsys):
    version = save_version(_model(cfg), cfg, {})

    def run(*argv: str) -> tuple[int, str]:
        code = main(["models", *argv, "--config", "tiny", "--json"])
        return code, capsys.readouterr().out

    code, out = run("list")
    assert code == 0 and json.loads(out)["versions"][0]["version"] == version
    assert run("promote", version)[0] == 0 and active_version(cfg) == version
    code, out = run("show")
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
    version = save_version(model, cfg, {})
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
