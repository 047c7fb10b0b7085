"""Config: presets, environment and --set overrides, typed values, unknown keys refused."""

from __future__ import annotations

import pytest

from mmcore.config import REPO_ROOT, ConfigError, config_from_toml, load_config, preset_names, save_config


def test_presets_load_and_differ():
    assert {"default", "tiny", "demo", "paper"} <= set(preset_names())
    default, tiny = load_config("default", env={}), load_config("tiny", env={})
    assert default.model.image_encoder == "efficientnet_lite0" and default.model.text_encoder == "minilm"
    assert tiny.model.image_encoder == "tiny_cnn" and tiny.model.text_encoder == "tiny_bert"
    assert default.loss.ntxent == 0.5 and default.loss.temperature == 0.07
    assert default.train.lr == 1e-4 and default.train.weight_decay == 1e-5 and default.train.batch_size == 32


def test_precedence_file_env_set(tmp_path):
    env = {"MMDERM_TRAIN__EPOCHS": "5", "MMDERM_DEVICE": "cpu", "MMDERM_HOME": str(tmp_path / "h")}
    cfg = load_config("tiny", sets=["train.epochs=7", "model.fusion=gated"], env=env)
    assert cfg.train.epochs == 7  # --set beats the environment
    assert cfg.runtime.device == "cpu" and cfg.model.fusion == "gated"
    assert cfg.home == tmp_path / "h" and cfg.cases_db == tmp_path / "h" / "cases.sqlite"
    assert load_config("tiny", env=env).train.epochs == 5  # the environment beats the preset


def test_mmderm_config_picks_the_preset():
    assert load_config(env={"MMDERM_CONFIG": "tiny"}).model.image_encoder == "tiny_cnn"


def test_relative_home_resolves_against_repo_root_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("tiny", env={"MMDERM_HOME": "some/home"}).home == REPO_ROOT / "some" / "home"


def test_lists_and_types_are_parsed():
    cfg = load_config("tiny", sets=["train.note_strategies=M,P1", "data.split_fractions=[0.8, 0.1, 0.1]"], env={})
    assert cfg.train.note_strategies == ("M", "P1")
    assert cfg.data.split_fractions == (0.8, 0.1, 0.1)
    assert load_config("tiny", sets=["train.lr=1"], env={}).train.lr == 1.0  # ints widen to floats


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.epochz=3"], "unknown key train.epochz"),
        (["trian.epochs=3"], r"unknown section \[trian\]"),
        (["train.epochs=three"], "train.epochs must be an integer"),
        (["train.augment=1"], "must be true or false"),
        (["train.epochs=0"], "train.epochs must be between 1 and 10000"),
        (["train.lr=5"], "train.lr must be between"),
        (["train.finetune=most"], "train.finetune must be one of heads, partial, full"),
        (["model.fusion=sum"], "model.fusion must be one of"),
        (["data.split_fractions=[0, 0, 0]"], "not all zero"),
        (["runtime.device=tpu"], "runtime.device must be"),
        (["epochs=3"], "section.key=value"),
        (["data.split_fractions=[0.5, 0.5]"], "must have 3 items"),
    ],
)
def test_bad_overrides_are_clear_errors(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", sets=sets, env={})


def test_ranges_hold_for_files_and_the_environment_too(tmp_path):
    """What the Admin form refuses, the CLI, a TOML file or MMDERM_* cannot sneak past."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch_size = 1\n")
    with pytest.raises(ConfigError, match="train.batch_size must be between 2"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="jobs.gpus must be between 0 and 64"):
        load_config("tiny", env={"MMDERM_JOBS__GPUS": "-1"})
    with pytest.raises(ConfigError, match="model.image_size"):
        load_config("tiny", env={}).replace(**{"model.image_size": "8"})


def test_a_run_config_written_before_the_finetune_setting_still_reads(tmp_path):
    old = tmp_path / "config.toml"
    old.write_text('[train]\nfreeze_backbones = true\n[index]\ntext_strategy = "P1"\n')
    assert config_from_toml(old).train.finetune == "heads"


def test_unknown_key_in_file_and_env(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nimage_encoder = 'tiny_cnn'\ncolour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown key model.colour"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="unknown key train.speed"):
        load_config("tiny", env={"MMDERM_TRAIN__SPEED": "9"})
    with pytest.raises(ConfigError, match="no preset or file"):
        load_config("nonexistent", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_config_is_frozen_and_round_trips(tmp_path):
    cfg = load_config("tiny", sets=["model.fusion=concat_mlp"], env={})
    with pytest.raises(AttributeError):
        cfg.model.fusion = "mean"  # type: ignore[misc]
    save_config(cfg, tmp_path / "config.toml")
    again = config_from_toml(tmp_path / "config.toml", home=cfg.home)
    assert again.model == cfg.model and again.train == cfg.train and again.loss == cfg.loss
    assert cfg.replace(**{"train.epochs": "9"}).train.epochs == 9
