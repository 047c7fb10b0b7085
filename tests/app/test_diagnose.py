"""Diagnose page (AppTest): upload + note -> scores per modality, explanation, similar cases; bad uploads."""

from __future__ import annotations

from app_helpers import NOTE, lesion_png, open_page
from streamlit.testing.v1 import AppTest

from mmcore.audit import AuditLog

PAGE = "pages/1_Diagnose.py"


def _run(image: bytes | None, note: str | None, name: str = "lesion.png") -> AppTest:
    at = open_page(PAGE)
    assert not at.exception
    if image is not None:
        at.file_uploader(key="diagnose_upload").upload(name, image, "image/png")
    if note is not None:
        at.text_area(key="diagnose_note").input(note)
    at.run()
    at.button(key="diagnose_run").click().run()
    return at


def test_photo_and_note_give_scores_explanations_and_similar_cases(app_env):
    at = _run(lesion_png(), NOTE)
    assert not at.exception
    assert any("Research use only" in w.value for w in at.warning)
    assert len(at.metric) >= 3  # the top 3 with malignancy
    filed = [m.value for m in at.markdown if "ISIC files it as" in m.value]
    assert len(filed) == 3 and all(any(w in v for w in ("benign", "malignant", "indeterminate")) for v in filed)
    charts = at.get("plotly_chart")
    assert charts, "the score chart is missing"
    assert any("Image + note" in c.proto.spec for c in charts)
    assert len(at.get("image")) >= 2  # the photo and its overlay (and thumbnails of similar cases)
    assert any("Which words moved" in m.value for m in at.markdown)
    assert [b for b in at.button if b.key and b.key.startswith("diagnose_compare_")], "no similar cases shown"
    entries = AuditLog(app_env / "audit.jsonl").read(event="predict")
    assert entries and entries[-1]["top"] and NOTE not in (app_env / "audit.jsonl").read_text()


def test_note_alone_still_predicts(app_env):
    at = _run(None, NOTE)
    assert not at.exception
    assert len(at.metric) >= 3
    assert any("Note only" in c.proto.spec for c in at.get("plotly_chart"))


def test_bad_upload_gets_a_friendly_message(app_env):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    at = _run(buf.getvalue(), NOTE, name="photo.png")
    assert not at.exception
    assert any("cannot be used" in e.value and "GIF" in e.value for e in at.error)
    assert not at.metric


def test_truncated_jpeg_gets_a_friendly_message(app_env):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (150, 90, 60)).save(buf, format="JPEG")
    at = _run(buf.getvalue()[:400], None, name="photo.jpg")
    assert not at.exception
    assert any("damaged or incomplete" in e.value for e in at.error)


def test_changing_the_explanation_does_not_predict_again(app_env):
    at = _run(lesion_png(), NOTE)
    before = len(AuditLog(app_env / "audit.jsonl").read(event="predict"))
    at.slider(key="diagnose_opacity").set_value(0.8).run()
    at.selectbox(key="diagnose_method").set_value("Occlusion").run()
    assert not at.exception
    assert len(AuditLog(app_env / "audit.jsonl").read(event="predict")) == before


def test_the_drafted_description_survives_editing(app_env):
    at = _run(lesion_png(), None)
    at.button(key="diagnose_draft").click().run()
    assert not at.exception
    draft = at.text_area(key="diagnose_draft_text")
    assert draft.value.startswith("DRAFT for a clinician to edit")
    edited = draft.value + "\nClinician: regular pigment network on dermoscopy."
    draft.input(edited).run()  # the edit reruns the page without pressing the button again
    assert at.text_area(key="diagnose_draft_text").value == edited
    at.slider(key="diagnose_opacity").set_value(0.7).run()  # and so does any other widget
    assert at.text_area(key="diagnose_draft_text").value == edited
    drafted = AuditLog(app_env / "audit.jsonl").read(event="draft")
    assert len(drafted) == 1 and drafted[0]["user"]  # who drafted it is on record


def _text_page_png() -> bytes:
    """A photographed page of text: nothing like a skin lesion."""
    import io

    from PIL import Image, ImageDraw

    page = Image.new("RGB", (400, 500), "white")
    draw = ImageDraw.Draw(page)
    for i in range(25):
        draw.text((20, 15 + 19 * i), "Lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2, fill="black")
    buf = io.BytesIO()
    page.save(buf, format="PNG")
    return buf.getvalue()


def test_an_out_of_distribution_photo_is_said_so_first_and_its_scores_wait_to_be_asked_for(app_env):
    at = _run(_text_page_png(), None, name="page.png")
    assert not at.exception
    assert at.error and at.error[0].value.startswith("**Outside what this model knows.** This photo is unlike")
    assert "SynthDerm: procedurally drawn lesions, not real photographs" in at.error[0].value
    assert not at.metric and not any("Top 3" in m.value for m in at.markdown)  # no class scores
    assert at.get("image"), "the saliency map stays available"
    toggle = next(t for t in at.toggle if t.label == "Show the scores anyway")
    toggle.set_value(True).run()
    assert not at.exception and len(at.metric) >= 3
    assert any("Shown on request" in w.value for w in at.warning)
    entry = AuditLog(app_env / "audit.jsonl").read(event="predict")[-1]
    assert entry["in_distribution"] is False


def test_a_lesion_photo_passes_the_gate(app_env):
    at = _run(lesion_png(size=32), None)
    assert not at.exception and not at.error and len(at.metric) >= 3


def test_a_note_alone_works_on_the_first_click_and_an_empty_click_says_what_is_missing(app_env):
    at = open_page(PAGE)
    at.button(key="diagnose_run").click().run()
    assert any("Add a photo, a note, or both" in w.value for w in at.warning) and not at.metric
    at.text_area(key="diagnose_note").input(NOTE)
    at.button(key="diagnose_run").click().run()  # the note's value arrives with the click
    assert not at.exception and len(at.metric) >= 3


def test_before_the_click_the_page_says_which_inputs_it_holds(app_env):
    at = open_page(PAGE)
    at.file_uploader(key="diagnose_upload").upload("lesion.png", lesion_png(size=32), "image/png")
    at.run()
    assert [c.value for c in at.caption if c.value.startswith("Ready")] == [
        "Ready to analyse the photo: press **Analyse**."
    ]
    at.text_area(key="diagnose_note").input(NOTE).run()
    assert any(c.value.startswith("Ready to analyse the photo and the note") for c in at.caption) and not at.metric


def test_a_zero_byte_upload_gets_the_intakes_message(app_env):
    at = _run(b"", None, name="empty.jpg")
    assert not at.exception
    assert any("cannot be used" in e.value and "empty" in e.value for e in at.error)


def test_results_stay_marked_stale_when_the_inputs_change(app_env):
    at = _run(lesion_png(size=32), NOTE)
    scores = [m.value for m in at.metric]
    at.text_area(key="diagnose_note").input(NOTE + " Itchy.").run()
    assert any("Inputs changed" in i.value for i in at.info)
    assert [m.value for m in at.metric] == scores  # the previous results, still shown


def test_an_example_fills_the_photo_and_the_note(app_env):
    at = open_page(PAGE)
    at.radio(key="diagnose_photo_source").set_value("Example").run()
    at.selectbox(key="diagnose_example").set_value("melanoma (dermoscopy)").run()
    assert at.text_area(key="diagnose_note").value.startswith("55 yo M.")
    at.button(key="diagnose_run").click().run()
    assert not at.exception and len(at.metric) >= 3


def test_the_patient_details_say_the_model_reads_none_of_them(app_env):
    at = open_page(PAGE)
    assert any("change no score" in c.value for c in at.caption)


def test_the_findings_panel_and_the_consult_download_appear(app_env):
    from mmcore.concepts import FINDING_NAMES
    from pages._lib.findings import MEANINGS

    assert set(MEANINGS) == set(FINDING_NAMES)  # every finding scored is explained
    at = _run(lesion_png(), NOTE)
    assert not at.exception
    assert any(h.value == "Findings the model sees" for h in at.subheader)
    assert any(c.value.startswith("Research output, not clinical findings") for c in at.caption)
    scored = [b for b in at.get("progress") if "validation AUROC" in b.proto.text or b.proto.text[:1].isdigit()]
    assert scored, "no finding score drawn"
    shown = at.selectbox(key="diagnose_finding")
    assert shown.value in FINDING_NAMES and shown.options
    captions = [im.caption for element in at.get("image") for im in element.proto.imgs]
    assert f"Grad-CAM of the {shown.value} score: where the photo drives it (outline: top 20%)" in captions
    (button,) = [d for d in at.get("download_button") if d.proto.label == "Download consult PDF"]
    assert not button.proto.disabled


def test_findings_of_an_out_of_distribution_photo_wait_with_its_scores(app_env):
    at = _run(_text_page_png(), None, name="page.png")
    assert not at.exception
    assert any(c.value.startswith("Withheld with the class scores") for c in at.caption)
    assert not [s for s in at.selectbox if s.key == "diagnose_finding"]
