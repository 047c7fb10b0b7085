"""The Predictor on a tiny saved model version in a temporary data home, with a real case index over SynthDerm cases:
probabilities per modality, the audit entry (hashes, never the note), intake errors, explanations, similar cases
(cross-modal, filtered), the draft note, and 8 threads x 25 explanations on one shared Predictor."""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore.audit import AuditLog, sha256_text
from mmcore.cases import DX_CLASSES, DX_NAMES, CaseStore
from mmcore.commands import main
from mmcore.config import load_config
from mmcore.images import CorruptImage, EmptyImage, ImageRejected, UnsupportedFormat
from mmcore.index import close_indexes
from mmcore.lru import LRU
from mmcore.model import MultimodalModel, build_model
from mmcore.model_card import DataSummary, ModelCard, TrainingData
from mmcore.model_store import promote, save_version
from mmcore.predictor import (
    ClassScore,
    Explanation,
    Prediction,
    Predictor,
    RetrievalUnavailable,
    SimilarCase,
)

NOTE = "Asymmetric pigmented lesion on the back with blue-grey veil and irregular streaks, growing."
MEL, NV = DX_CLASSES.index("mel"), DX_CLASSES.index("nv")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _photo(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 200, (size[1], size[0], 3), dtype=np.uint8)
    pixels[10:25, 12:30] = (60, 40, 30)  # a dark "lesion"
    return _png(Image.fromarray(pixels))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A data home with 12 SynthDerm cases, a tiny model version (active), their embeddings and the case index."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMDERM_HOME", str(home))
        assert main(["synth", "--n", "12", "--seed", "4", "--size", "48", "--json"]) == 0
    cfg = load_config("tiny", env={"MMDERM_HOME": str(home)})
    torch.manual_seed(0)
    # few type II cases (5 of 40): the few-training-cases warning must fire
    card = ModelCard(training_data=TrainingData(train=DataSummary(n=40, fitzpatrick={"2": 5, "3": 35})))
    version = save_version(build_model(cfg.model, DX_CLASSES).eval(), cfg, card)
    promote(cfg, version, "tester", allow_unevaluated=True)  # embeds every case, builds the index
    predictor = Predictor.from_config(cfg)
    with CaseStore(home) as store:
        cases = store.cases(with_notes=True)
    yield predictor, cfg, cases
    close_indexes()


def _audit(cfg) -> list[dict]:
    return AuditLog(cfg.audit_path).read(event="predict")


# --- loading, predicting --------------------------------------------------------------------------------------


def test_from_config_loads_the_active_version_once(served):
    predictor, cfg, _ = served
    assert predictor.version == predictor.card.version and predictor.classes == DX_CLASSES
    assert predictor.card.intended_use.startswith("Research use only")
    assert not predictor.model.training and predictor.device.type == "cpu"


def test_predict_gives_probabilities_per_modality(served):
    predictor, _, _ = served
    image_only = predictor.predict(_photo(0), None)
    assert isinstance(image_only, Prediction) and image_only.modality == "image"
    assert image_only.probabilities["text"] is None and image_only.probabilities["fused"] is None
    note_only = predictor.predict(None, NOTE)
    assert note_only.modality == "text" and note_only.probabilities["image"] is None and note_only.image_sha256 == ""
    both = predictor.predict(_photo(0), NOTE, top_k=3)
    assert both.modality == "fused" and all(both.probabilities[m] for m in ("image", "text", "fused"))
    for probs in both.probabilities.values():
        assert set(probs) == set(DX_CLASSES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(both.top) == 3 and all(isinstance(c, ClassScore) for c in both.top)
    assert [c.probability for c in both.top] == sorted((c.probability for c in both.top), reverse=True)
    best = max(both.probabilities["fused"], key=both.probabilities["fused"].get)
    assert both.top[0].dx == best and both.top[0].name == DX_NAMES[best]
    assert {c.malignancy for c in both.top} <= {"benign", "malignant", "indeterminate"}
    assert both.model_version == predictor.version and both.note_sha256 == sha256_text(NOTE.strip())
    with pytest.raises(ValueError, match="photo, a note, or both"):
        predictor.predict(None, "   ")


def test_predict_writes_an_audit_entry_without_the_note_text(served):
    predictor, cfg, _ = served
    before = len(_audit(cfg))
    prediction = predictor.predict(_photo(1), NOTE, user="dr_a")
    entries = _audit(cfg)
    assert len(entries) == before + 1
    entry = entries[-1]
    assert entry["user"] == "dr_a" and entry["model_version"] == predictor.version
    assert entry["image_sha256"] == prediction.image_sha256 and len(entry["image_sha256"]) == 64
    assert entry["note_sha256"] == sha256_text(NOTE) and entry["top"] == prediction.top[0].dx
    raw = cfg.audit_path.read_text()
    assert "blue-grey veil" not in raw and "Asymmetric" not in raw
    assert AuditLog(cfg.audit_path).verify().ok


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", EmptyImage, "empty"),
        (b"GIF89a" + b"\x00" * 64, UnsupportedFormat, "JPEG, PNG or HEIC"),
        (_photo(2)[:60], CorruptImage, "damaged or incomplete"),
    ],
)
def test_a_bad_upload_raises_the_intake_error_with_a_readable_message(served, data, error, words):
    predictor, cfg, _ = served
    before = len(_audit(cfg))
    with pytest.raises(error, match=words) as caught:
        predictor.predict(data, NOTE)
    assert isinstance(caught.value, ImageRejected) and "Traceback" not in str(caught.value)
    with pytest.raises(ImageRejected):
        predictor.explain(data, None)
    assert len(_audit(cfg)) == before  # nothing is logged for a refused upload


def test_an_upload_is_decoded_once_across_predict_explain_and_embed(served, monkeypatch):
    import mmcore.predictor as module

    predictor, _, _ = served
    calls = []
    real = module.load_image
    monkeypatch.setattr(module, "load_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = _photo(3)
    predictor.predict(data, None)
    predictor.predict(data, NOTE)
    predictor.embed(data)
    predictor.explain(data, None)
    assert len(calls) == 1


def test_warnings_for_disagreement_small_photos_and_metadata(served):
    predictor, cfg, _ = served
    rigged = _rigged(predictor.model, image_class=MEL, text_class=NV)
    p = Predictor(rigged, cfg, predictor.version, predictor.card).predict(_photo(4), NOTE)
    assert any(w.startswith("image and note disagree") for w in p.warnings)
    assert any("smaller than the model's input" in w for w in predictor.predict(_photo(4, (20, 20)), None).warnings)
    p = predictor.predict(None, NOTE, metadata={"age": "45", "sex": "F", "site": "back", "fitzpatrick": "II", "x": 1})
    assert p.metadata == {"age": 45.0, "sex": "female", "site": "posterior torso", "fitzpatrick": 2}
    assert "ignored metadata fields: x" in p.warnings
    assert any("few training cases with Fitzpatrick type 2 (5 of 40)" in w for w in p.warnings)
    with pytest.raises(ValueError, match="age"):
        predictor.predict(None, NOTE, metadata={"age": 200})


def _rigged(model: MultimodalModel, image_class: int, text_class: int) -> MultimodalModel:
    """A copy whose image tower always says `image_class` and text tower `text_class` (hand-set head weights)."""
    import copy

    rigged = copy.deepcopy(model)
    heads = rigged.heads
    D = heads.shared.in_features
    with torch.no_grad():
        for proj, unit in ((heads.image_proj.fc, 0), (heads.text_proj.fc, 1)):
            proj.weight.zero_()
            proj.bias.zero_()
            proj.bias[unit] = 1.0  # relu -> e_unit whatever the input
        heads.shared.weight.copy_(torch.eye(D))
        heads.shared.bias.zero_()
        heads.classifier.weight.zero_()
        heads.classifier.bias.zero_()
        heads.classifier.weight[image_class, 0] = 5.0
        heads.classifier.weight[text_class, 1] = 5.0
    return rigged


# --- explain ----------------------------------------------------------------------------------------------------


def test_explain_gives_a_heat_map_words_and_attention(served):
    predictor, _, _ = served
    data = _photo(5, (60, 44))
    explanation = predictor.explain(data, NOTE, method="gradcam", target="mel")
    assert isinstance(explanation, Explanation) and explanation.target == "mel" and explanation.target_index == MEL
    assert explanation.image.size == (60, 44) and explanation.heatmap.shape == (44, 60)
    assert explanation.heatmap.min() >= 0 and explanation.heatmap.max() <= 1
    assert not explanation.heatmap.flags.writeable  # cached and shared: read-only
    words = [w for w, _ in explanation.words]
    assert words[:3] == ["asymmetric", "pigmented", "lesion"] and not {"[CLS]", "[SEP]", "[PAD]"} & set(words)
    T = len(explanation.tokens)
    assert explanation.tokens[0] == "[CLS]" and explanation.tokens[-1] == "[SEP]"
    assert explanation.attentions.shape == (2, 2, T, T) and explanation.rollout.shape == (T,)
    assert explanation.rollout.sum() == pytest.approx(1.0, abs=1e-5)
    assert [w for w, _ in explanation.rollout_words] == words
    assert explanation.overlay(opacity=0.6).size == (60, 44) and explanation.colorbar().size[0] == 256
    assert predictor.explain(data, NOTE, method="gradcam", target="mel") is explanation  # the LRU
    fused = predictor.explain(data, NOTE, method="occlusion", target=NV, fused=True)
    assert fused.through == "fused" and fused.heatmap.shape == (44, 60)
    image_only = predictor.explain(data, None)
    assert image_only.words == [] and image_only.attentions is None
    with pytest.raises(ValueError, match="unknown explanation method"):
        predictor.explain(data, None, method="lime")
    with pytest.raises(ValueError, match="unknown class"):
        predictor.explain(data, None, target="xyz")


def test_8_threads_x_25_explanations_on_one_predictor_give_no_errors(served):
    predictor, cfg, _ = served
    shared = Predictor(predictor.model, cfg, predictor.version, predictor.card)
    shared._explanations = LRU(0)  # no cache: every call really runs Captum
    photos = [_photo(10 + i) for i in range(3)]
    reference = {(i, t): shared.explain(photos[i], None, "gradcam", t).heatmap for i in range(3) for t in (0, 4)}
    errors, results = [], []

    def work(worker: int) -> None:
        for call in range(25):
            i, t = (worker + call) % 3, (0, 4)[call % 2]
            try:
                note = NOTE if call % 5 == 0 else None
                explanation = shared.explain(photos[i], note, "gradcam", t)
                results.append(np.allclose(explanation.heatmap, reference[(i, t)], atol=1e-5))
                if call % 3 == 0:  # predictions on the same model meanwhile
                    shared.predict(photos[i], note, user=f"t{worker}")
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 200 and all(results)


# --- similar, embed ---------------------------------------------------------------------------------------------


def test_embed_gives_unit_vectors_of_the_shared_space(served):
    predictor, _, _ = served
    vectors = predictor.embed(_photo(6), NOTE)
    assert set(vectors) == {"image", "text"}
    for v in vectors.values():
        assert v.shape == (16,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    image = Image.open(io.BytesIO(_photo(6))).convert("RGB")
    with torch.no_grad():
        expected = predictor.model.encode_image(predictor.model.image_transform()(image).unsqueeze(0))[0]
    assert np.allclose(vectors["image"], expected.numpy(), atol=1e-5)


def test_similar_finds_the_case_itself_first_and_filters(served):
    predictor, cfg, cases = served
    home = cfg.home
    case = cases[3]
    hits = predictor.similar((home / case.image_path).read_bytes(), k=5)
    assert all(isinstance(h, SimilarCase) for h in hits) and len(hits) == 5
    assert hits[0].case_id == case.case_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].dx == case.dx and hits[0].name == DX_NAMES[case.dx] and hits[0].notes["P1"] == case.notes["P1"]
    assert hits[0].image_path is not None and hits[0].image_path.is_file() and hits[0].modality == "image"
    assert hits[0].metadata["site"] == case.site and hits[0].metadata["domain"] == case.domain
    dx = case.dx
    assert {h.dx for h in predictor.similar((home / case.image_path).read_bytes(), k=12, where={"dx": dx})} == {dx}


def test_a_note_alone_searches_the_image_collection_and_both_combine(served):
    predictor, cfg, cases = served
    note = cases[5].notes["clinical"]  # the text collection holds clinical notes first
    cross = predictor.similar(note=note, k=4)  # cross-modal: note -> images
    assert len(cross) == 4 and all(h.modality == "image" for h in cross)
    texts = predictor.similar(note=note, k=1, modality="text")
    assert texts[0].notes["clinical"] == note and texts[0].score == pytest.approx(1.0, abs=1e-4)  # views share notes
    photo = (cfg.home / cases[5].image_path).read_bytes()
    image_only = predictor.similar(photo, note, k=3, weights=(1.0, 0.0))
    assert image_only[0].case_id == cases[5].case_id
    with pytest.raises(ValueError, match="weights"):
        predictor.similar(photo, note, weights=(0.0, 0.0))
    with pytest.raises(ValueError, match="modality"):
        predictor.similar(photo, modality="both")


def test_similar_without_an_index_says_so(served):
    predictor, cfg, _ = served
    other = Predictor(predictor.model, cfg, "v9999-20990101T000000Z", predictor.card)
    with pytest.raises(RetrievalUnavailable, match="not available"):
        other.similar(_photo(7))
    assert "Similar past cases: not used." in other.draft_note(_photo(7))


def test_explain_similarity_maps_both_images(served):
    predictor, cfg, cases = served
    case = cases[2]
    explanation = predictor.explain_similarity(case.case_id, _photo(8, (40, 40)))
    assert explanation.case_heatmap.shape == explanation.case_image.size[::-1]
    assert explanation.query_heatmap.shape == (40, 40) and -1 <= explanation.score <= 1
    from_note = predictor.explain_similarity(case.case_id, note=NOTE)
    assert from_note.query_heatmap is None and from_note.case_heatmap is not None


# --- draft note -------------------------------------------------------------------------------------------------


def test_draft_note_says_it_is_a_draft_and_is_grounded(served):
    predictor, cfg, cases = served
    photo = (cfg.home / cases[0].image_path).read_bytes()
    draft = predictor.draft_note(photo, user="dr_b")
    first = draft.splitlines()[0]
    assert first.startswith("DRAFT for a clinician to edit") and "not a diagnosis" in first
    top = predictor.predict(photo, None).top[0]
    assert top.name in draft and "Where the model looked" in draft and "Grad-CAM" in draft
    assert "Similar past cases: of the 5 nearest" in draft
    drafted = AuditLog(cfg.audit_path).read(event="draft")[-1]  # who drafted what is on record, never the text
    assert drafted["user"] == "dr_b" and drafted["model_version"] == predictor.version and "text" not in drafted


# --- trust: the out-of-distribution verdict and calibrated scores ---------------------------------------------


def _gate(predictor: Predictor, threshold: float):
    """An image gate fitted on random features, with its threshold set by hand (-1: flag everything)."""
    import dataclasses

    from mmcore.ood import OODScorer, fit_image_ood

    rng = np.random.default_rng(0)
    dim = predictor.model.image_encoder.feature_dim
    image = fit_image_ood(rng.normal(size=(40, dim)), np.arange(40) % 2, rng.normal(size=(20, dim)))
    return OODScorer(image=dataclasses.replace(image, threshold=threshold), note=None)


def test_a_version_without_a_gate_says_so(served):
    predictor, _, _ = served
    p = predictor.predict(_photo(1), None)
    assert p.in_distribution is None and p.ood_score is None
    assert any("no out-of-distribution gate" in w for w in p.warnings)
    assert any("not calibrated" in w for w in p.warnings)


def test_an_out_of_distribution_photo_is_said_so_and_audited(served):
    predictor, cfg, _ = served
    card = dataclasses.replace(predictor.card, trained_on="SynthDerm: procedurally drawn lesions, not real photographs")
    gated = Predictor(predictor.model, cfg, predictor.version, card, _gate(predictor, threshold=-1.0))
    p = gated.predict(_photo(2), None, user="dr_c")
    assert p.in_distribution is False and p.ood_score > p.check.ood_threshold
    assert p.reasons == [
        "This photo is unlike the cases this model learned from (SynthDerm: procedurally drawn lesions, not real "
        "photographs); its scores would mean nothing."
    ]
    entry = AuditLog(cfg.audit_path).read(event="predict")[-1]
    assert entry["in_distribution"] is False and entry["user"] == "dr_c" and entry["ood_score"] > 0
    assert gated.check(_photo(2), None).in_distribution is False
    assert gated.draft_note(_photo(2)).startswith("No description drafted. This photo is unlike")
    passing = Predictor(predictor.model, cfg, predictor.version, card, _gate(predictor, threshold=1e9))
    assert passing.predict(_photo(2), None).in_distribution is True


def test_scores_are_calibrated_with_the_versions_temperature(served):
    predictor, cfg, _ = served
    card = dataclasses.replace(predictor.card, calibration={"temperatures": {"image": 3.0, "text": 1.0, "fused": 1.0}})
    warm = Predictor(predictor.model, cfg, predictor.version, card)
    plain, calibrated = predictor.predict(_photo(3), None), warm.predict(_photo(3), None)
    assert calibrated.calibrated and not plain.calibrated
    p, q = plain.probabilities["image"], calibrated.probabilities["image"]
    assert sum(q.values()) == pytest.approx(1.0) and max(q, key=q.get) == max(p, key=p.get)  # argmax kept
    logits = np.log([p[c] for c in predictor.classes])  # log-softmax, up to a constant
    expected = np.exp(logits / 3.0) / np.exp(logits / 3.0).sum()
    np.testing.assert_allclose([q[c] for c in predictor.classes], expected, atol=1e-6)


def test_a_long_explanation_stops_when_another_is_asked_for(served):
    import threading

    from mmcore.predictor import ExplanationCancelled

    predictor, _, _ = served
    cancel = threading.Event()
    cancel.set()  # asked for another method before this one's first forward pass
    with pytest.raises(ExplanationCancelled):
        predictor.explain(_photo(9), None, method="occlusion", cancel=cancel)
    done = predictor.explain(_photo(9), None, method="occlusion", cancel=threading.Event())
    assert done.heatmap is not None and predictor.expected_seconds("occlusion", with_note=False) > 0
    predictor.warm_up()  # first-call costs paid ahead, nothing audited
    assert not [e for e in AuditLog(predictor.cfg.audit_path).read() if e.get("image_sha256") == "warm"]
