"""The model card: a fixed schema that round-trips, one sentence on the training data, and today's reader for the
first schema's cards (flat `val_*` metrics, nested per-modality dicts, an `evaluation` table)."""

from __future__ import annotations

from mmcore.model_card import CARD_SCHEMA, DataSummary, ModelCard, TrainingRun, describe_training_data

SCHEMA_1 = {
    "name": "mmderm multimodal dermatology classifier",
    "version": "v0001-20261101T120000Z",
    "created": "2026-11-01T12:00:00+00:00",
    "intended_use": "Research use only; not for diagnostic purposes.",
    "labels": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
    "encoders": {"image": {"name": "efficientnet_lite0", "feature_dim": 1280, "pretrained": True, "source": "x"}},
    "training_data": {
        "train": {"n": 980, "dx": {"nv": 700}, "domain": {"dermoscopy": 330}, "source": {"synthderm": 980}},
        "note_strategies": ["P1", "clinical"],
        "train_domains": "all",
        "source": "all",
    },
    "metrics": {
        "val_loss": 1.2,
        "val_balanced_accuracy_fused": 0.9,
        "test_clinical_accuracy_fused": 0.8,
        "fused": {"accuracy": 0.8},
    },
    "evaluation": {
        "test_clinical": {
            "file": "eval_test_clinical.json",
            "n": 196,
            "created": "2026-11-01T12:05:00Z",
            "accuracy_fused": 0.816,
            "balanced_accuracy_fused": 0.606,
            "ece_image": 0.2,
            "mAP_text_to_image": 0.67,
        }
    },
    "training": {"freeze_backbones": True, "epochs": 30, "lr": 0.001},
    "files": {"model.safetensors": "ab" * 32},
}


def test_a_first_schema_card_reads_into_todays_fields():
    card = ModelCard.from_dict(SCHEMA_1)
    assert card.schema == CARD_SCHEMA and card.version == "v0001-20261101T120000Z"
    assert card.training.finetune == "heads" and card.training.epochs == 30
    assert card.training.validation == {"loss": 1.2, "balanced_accuracy_fused": 0.9}
    assert card.encoders["image"].trained == [] and card.encoders["image"].feature_dim == 1280
    head = card.headline
    assert head is not None and head.split == "test" and head.text_strategy == "clinical" and head.n == 196
    assert head.modalities["fused"].balanced_accuracy == 0.606 and head.modalities["image"].ece_uncalibrated == 0.2
    assert head.retrieval_map == {"text_to_image": 0.67}
    assert card.training_data.train_domains == [] and card.training_data.source == ""
    assert card.trained_on.startswith("SynthDerm: procedurally drawn lesions, not real photographs (980 training")
    assert card.files == {"model.safetensors": "ab" * 32}


def test_todays_card_round_trips_and_ignores_unknown_keys():
    card = ModelCard(version="v0002-20261101T120000Z", training=TrainingRun(finetune="partial", trainable_blocks=2))
    data = card.to_dict() | {"a_future_field": 1}
    assert ModelCard.from_dict(data) == card


def test_training_data_in_one_sentence():
    real = DataSummary(n=8000, source={"ham10000": 8000}, domain={"dermoscopy": 8000})
    assert describe_training_data(real) == "ham10000 (8,000 training cases; dermoscopy views)"
    synth = DataSummary(n=980, source={"synthderm": 980}, domain={"atlas": 1, "clinical": 1, "dermoscopy": 1})
    assert describe_training_data(synth) == (
        "SynthDerm: procedurally drawn lesions, not real photographs (980 training cases; atlas, clinical and "
        "dermoscopy views)"
    )
