"""Importers: each format read from fixtures in its real column layout, its label table, bad rows reported with file,
row and reason, re-imports that add nothing, imports that fail halfway and lose nothing, lesion-grouped splits, and
the `import` command. Fixtures: tests/fixtures/<format>/, written by tests/fixtures/make_fixtures.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mmcore.cases import DX_CODES, SPLITS, CaseStore
from mmcore.commands import build_parser, main
from mmcore.images import ImageRejected, load_image
from mmcore.importers import (
    READERS,
    ImportFailed,
    ImportResult,
    derm7pt,
    fitzpatrick17k,
    folder,
    ham10000,
    import_dataset,
    isic,
    pad_ufes_20,
    scin,
)
from mmcore.importers._common import ImageFinder
from mmcore.importers.folder import parse_columns
from mmcore.importers.isic import isic_dx
from mmcore.importers.scin import age_of_group

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FOLDER_COLUMNS = (
    "image=file,dx=diagnosis,age=patient_age,sex=gender,site=body_site,lesion_id=lesion,patient_id=patient,"
    "fitzpatrick=skin_type,domain=modality"
)
DATASETS = {  # fixture name: (format, metadata, images, options)
    "ham10000": ("ham10000", "ham10000/HAM10000_metadata.csv", "ham10000", {}),
    "isic": ("isic", "isic/metadata.csv", "isic/images", {}),
    "isic_legacy": ("isic", "isic/metadata_legacy.csv", "isic/images", {"source": "isic-legacy"}),
    "pad_ufes_20": ("pad-ufes-20", "pad_ufes_20/metadata.csv", "pad_ufes_20/images", {}),
    "derm7pt": ("derm7pt", "derm7pt/meta/meta.csv", "derm7pt/images", {}),
    "fitzpatrick17k": ("fitzpatrick17k", "fitzpatrick17k/fitzpatrick17k.csv", "fitzpatrick17k/images", {}),
    "scin": ("scin", "scin/scin_cases.csv", "scin", {}),
    "folder": ("folder", "folder/labels.csv", "folder/photos", {"columns": FOLDER_COLUMNS}),
}


@pytest.fixture
def store(home: Path):
    with CaseStore(home) as s:
        yield s


def run(store: CaseStore, name: str, **overrides) -> ImportResult:
    fmt, metadata, images, opts = DATASETS[name]
    return import_dataset(store, fmt, FIXTURES / metadata, FIXTURES / images, **{**opts, **overrides})


def rejections(result: ImportResult) -> set[tuple[str, int, str]]:
    return {(Path(r.file).name, r.row, r.reason) for r in result.rejected}


def by_id(store: CaseStore, source: str) -> dict:
    """The dataset's own id -> stored case."""
    return {c.case_id.split(":", 1)[1]: c for c in store.cases(source=source)}


def intake_message(data: bytes) -> str:
    with pytest.raises(ImageRejected) as e:
        load_image(data)
    return str(e.value)


# ---- one test per format: labels, fields, rejections ----


def test_ham10000(store):
    result = run(store, "ham10000")
    cases = by_id(store, "ham10000")
    assert {k: c.dx for k, c in cases.items()} == {
        "ISIC_0027419": "bkl",
        "ISIC_0025030": "bkl",  # in HAM10000_images_part_2
        "ISIC_0026769": "mel",
        "ISIC_0031633": "nv",
        "ISIC_0029176": "vasc",
    }
    assert (result.imported, result.skipped_duplicates) == (5, 0)
    not_image = intake_message(b"this is not a picture\n")
    assert rejections(result) == {
        ("HAM10000_metadata.csv", 7, "unknown diagnosis: not a label this format knows"),
        ("HAM10000_metadata.csv", 8, "age is impossible (must be 0-120)"),
        ("HAM10000_metadata.csv", 9, "image_id: image file not found"),
        ("HAM10000_metadata.csv", 10, "duplicate image_id (first on row 2)"),
        ("HAM10000_metadata.csv", 11, "sex is not male, female or unknown"),
        ("HAM10000_metadata.csv", 12, f"image_id: {not_image}"),
    }
    nv, vasc = cases["ISIC_0031633"], cases["ISIC_0029176"]
    assert (nv.age, nv.sex, nv.dx_type, nv.site) == (None, None, "serial imaging showing no change", "lower extremity")
    assert (vasc.dx_type, vasc.site, vasc.site_detail) == ("single image expert consensus", "torso", "trunk")
    mel = cases["ISIC_0026769"]
    assert (mel.age, mel.sex, mel.lesion_id, mel.malignancy, mel.domain) == (
        75.0,
        "female",
        "HAM_0002730",
        "malignant",
        "dermoscopy",
    )
    assert mel.extra == {"dataset": "rosendahl"}
    assert store.image_path(mel).is_file() and mel.case_id == "ham10000:ISIC_0026769"


def test_isic_new_hierarchical_columns(store):
    result = run(store, "isic")
    cases = by_id(store, "isic")
    assert {k: c.dx for k, c in cases.items()} == {
        "ISIC_9000001": "mel",  # Melanoma Invasive, Superficial spreading -> Melanoma Invasive
        "ISIC_9000002": "nv",  # Nevus, Clark -> ... -> Nevus
        "ISIC_9000003": "akiec",  # Squamous cell carcinoma in situ, Bowens disease (HAM's akiec holds Bowen's)
        "ISIC_9000004": "vasc",  # Hemangioma, Cherry
        "ISIC_9000005": "other",  # Molluscum: an ISIC diagnosis with no class of ours
        "ISIC_9000006": "bcc",
    }
    assert rejections(result) == {
        ("metadata.csv", 8, "unknown diagnosis: diagnosis_1..5 name no term of the ISIC table"),
        ("metadata.csv", 9, "no diagnosis"),
        ("metadata.csv", 10, "isic_id: image file not found"),
        ("metadata.csv", 11, "duplicate isic_id (first on row 2)"),
        ("metadata.csv", 12, "age is impossible (must be 0-120)"),
        ("metadata.csv", 13, "Fitzpatrick type is not 1-6 or I-VI"),
    }
    assert {k: c.domain for k, c in cases.items()} == {
        "ISIC_9000001": "dermoscopy",
        "ISIC_9000002": "clinical",
        "ISIC_9000003": "clinical",  # TBP tile
        "ISIC_9000004": "dermoscopy",
        "ISIC_9000005": "clinical",
        "ISIC_9000006": "dermoscopy",
    }
    bowen = cases["ISIC_9000003"]  # anatom_site_general blank: site from anatom_site_1..3; a .png source
    assert (bowen.site, bowen.site_detail, store.image_path(bowen).suffix) == ("head/neck", "Face", ".png")
    first = cases["ISIC_9000001"]
    assert (first.fitzpatrick, first.patient_id, first.lesion_id, first.dx_type) == (
        2,
        "IP_1",
        "IL_1",
        "histopathology",
    )
    assert first.extra["copyright_license"] == "CC-BY" and first.extra["attribution"] == "Hospital Clinic de Barcelona"
    assert first.extra["diagnosis"].endswith("Melanoma Invasive:Melanoma Invasive, Superficial spreading")
    assert cases["ISIC_9000005"].malignancy == "benign"  # from diagnosis_1, since "other" says nothing


def test_isic_old_flat_columns(store):
    result = run(store, "isic_legacy")
    cases = by_id(store, "isic-legacy")
    assert {k: c.dx for k, c in cases.items()} == {
        "ISIC_0010001": "mel",
        "ISIC_0010002": "bkl",
        "ISIC_0010003": "bkl",  # solar lentigo
        "ISIC_0010004": "other",  # cafe-au-lait macule: an old ISIC diagnosis with no class of ours
        "ISIC_0010005": "other",  # AIMP
    }
    assert cases["ISIC_0010005"].malignancy == "indeterminate"  # from benign_malignant
    assert cases["ISIC_0010001"].extra["melanocytic"] == "True"  # fields no importer reads are kept
    assert rejections(result) == {
        ("metadata_legacy.csv", 7, "unknown diagnosis: not a label this format knows"),
        ("metadata_legacy.csv", 8, "image_type is confocal microscopy, not a photograph of the skin"),
    }


@pytest.mark.parametrize(
    ("levels", "legacy", "code"),
    [
        (["Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ"], "", "mel"),
        (["Benign", "Benign melanocytic proliferations", "Nevus", "Nevus, Spitz"], "", "nv"),
        (["Benign", "Benign melanocytic proliferations", "Lentigo simplex"], "", "nv"),  # falls back to level 2
        (["Benign", "Benign epidermal proliferations", "Seborrheic keratosis"], "", "bkl"),
        (["Benign", "Benign epidermal proliferations", "Clear cell acanthoma"], "", "other"),
        (["Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis"], "", "akiec"),
        (["Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma, Invasive"], "", "scc"),
        (["Benign", "Benign soft tissue proliferations - Fibro-histiocytic", "Dermatofibroma"], "", "df"),
        (["Benign", "", "", "", ""], "", "other"),
        ([], "Benign:Benign melanocytic proliferations:Nevus", "nv"),  # fully qualified in one column
        ([], "basal cell carcinoma", "bcc"),
        ([], "pigmented benign keratosis", "bkl"),
        ([], "angiokeratoma", "vasc"),
        ([], "verruca", "other"),
    ],
)
def test_isic_diagnosis_table(levels, legacy, code):
    assert isic_dx(levels, legacy)[0] == code


def test_pad_ufes_20(store):
    result = run(store, "pad_ufes_20")
    cases = by_id(store, "pad-ufes-20")
    assert {c.extra["diagnostic"]: c.dx for c in cases.values()} == {
        "NEV": "nv",
        "BCC": "bcc",
        "ACK": "akiec",
        "SEK": "bkl",
        "MEL": "mel",
        "SCC": "scc",
    }
    assert rejections(result) == {
        ("metadata.csv", 8, "unknown diagnostic: not a label this format knows"),
        ("metadata.csv", 9, "age is impossible (must be 0-120)"),
        ("metadata.csv", 10, "img_id: image file not found"),
        ("metadata.csv", 11, "duplicate img_id (first on row 3)"),
        ("metadata.csv", 12, "Fitzpatrick type is not 1-6"),
    }
    bcc = cases["PAT_46_881_939.png"]
    assert (bcc.patient_id, bcc.lesion_id, bcc.sex, bcc.fitzpatrick, bcc.site, bcc.site_detail, bcc.domain) == (
        "PAT_46",
        "881",
        "female",
        3,
        "head/neck",
        "NECK",
        "clinical",
    )
    assert bcc.dx_type == "histopathology"
    assert {k: bcc.extra[k] for k in ("itch", "grew", "hurt", "changed", "bleed", "elevation")} == {
        "itch": True,
        "grew": True,
        "hurt": False,
        "changed": True,
        "bleed": True,
        "elevation": True,
    }
    assert (bcc.extra["diameter_1_mm"], bcc.extra["diameter_2_mm"], bcc.extra["smoke"]) == (6.0, 5.0, False)
    scc = cases["PAT_795_1508_202.png"]  # UNK is unknown, not an error
    assert (scc.sex, scc.fitzpatrick) == (None, None)
    assert cases["PAT_1516_1765_530.png"].dx_type == "single contributor clinical assessment"  # not biopsied


def test_derm7pt_two_views_per_lesion_and_official_split(store):
    result = run(store, "derm7pt")
    cases = by_id(store, "derm7pt")
    assert set(cases) == {f"{n}-{v}" for n in (1, 2, 3, 4, 5, 6) for v in ("clin", "derm")} | {"8-derm"}
    assert {c.lesion_id: c.dx for c in cases.values()} == {
        "1": "bcc",
        "2": "mel",  # melanoma (less than 0.76 mm)
        "3": "nv",  # clark nevus
        "4": "bkl",  # seborrheic keratosis
        "5": "nv",  # reed or spitz nevus
        "6": "bkl",  # lentigo
        "8": "df",
    }
    assert {k: c.domain for k, c in cases.items() if k.startswith("1-")} == {
        "1-clin": "clinical",
        "1-derm": "dermoscopy",
    }
    official = {"1": "train", "2": "test", "3": "train", "4": "val", "5": "test", "6": "train", "8": "train"}
    assert {k: c.split for k, c in cases.items()} == {k: official[k.split("-")[0]] for k in cases}
    assert rejections(result) == {
        ("meta.csv", 8, "unknown diagnosis: not a label this format knows"),
        ("meta.csv", 9, "clin: image file not found"),
        ("meta.csv", 10, "duplicate case_num (first on row 3)"),
        ("test_indexes.csv", 4, "indexes: not a data row of meta.csv (0-8)"),
    }
    mel = cases["2-derm"]
    assert mel.findings == {
        "pigment_network": "atypical",
        "streaks": "irregular",
        "pigmentation": "localized irregular",
        "regression_structures": "blue areas",
        "dots_and_globules": "irregular",
        "blue_whitish_veil": "present",
        "vascular_structures": "absent",
        "seven_point_score": 4,
    }
    assert (mel.sex, mel.site, mel.dx_type, mel.extra["diagnosis"]) == (
        "male",
        "posterior torso",
        "histopathology",
        "melanoma (less than 0.76 mm)",
    )
    assert cases["6-clin"].site == "oral/genital"  # "genital areas"


def test_derm7pt_without_index_files_splits_by_lesion(store, tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    shutil.copy(FIXTURES / "derm7pt/meta/meta.csv", meta / "meta.csv")
    result = import_dataset(store, "derm7pt", meta / "meta.csv", FIXTURES / "derm7pt/images")
    assert len(result.warnings) == 1 and "train_indexes.csv" in result.warnings[0]
    splits = defaultdict(set)
    for case in store.cases(source="derm7pt"):
        splits[case.lesion_id].add(case.split)
    assert all(len(s) == 1 and s <= set(SPLITS) for s in splits.values())


def test_fitzpatrick17k(store):
    result = run(store, "fitzpatrick17k")
    cases = store.cases(source="fitzpatrick17k")
    assert {c.extra["label"]: c.dx for c in cases} == {
        "drug induced pigmentary changes": "other",
        "melanoma": "mel",
        "basal cell carcinoma": "bcc",
        "squamous cell carcinoma": "scc",
        "actinic keratosis": "akiec",
        "seborrheic keratosis": "bkl",
        "pyogenic granuloma": "vasc",
        "nevocytic nevus": "nv",
        "kaposi sarcoma": "other",
    }
    assert {c.extra["label"]: c.fitzpatrick for c in cases}["actinic keratosis"] is None  # -1 is unknown
    assert {c.extra["label"]: c.malignancy for c in cases}["kaposi sarcoma"] == "malignant"
    assert all(c.domain == "atlas" for c in cases)
    assert rejections(result) == {
        ("fitzpatrick17k.csv", 11, "md5hash: image file not found"),
        ("fitzpatrick17k.csv", 12, "duplicate md5hash (first on row 3)"),
        ("fitzpatrick17k.csv", 13, "Fitzpatrick type is not 1-6"),
        ("fitzpatrick17k.csv", 14, "qc: quality control marks the label wrong"),
    }


def fitzpatrick17k_md5(seed: str) -> str:
    """The md5hash make_fixtures.py gives a Fitzpatrick17k fixture row."""
    return hashlib.md5(seed.encode()).hexdigest()


def test_scin(store):
    result = run(store, "scin")
    cases = by_id(store, "scin")
    case1 = "-1000600354148496558"
    assert {k: c.dx for k, c in cases.items()} == {
        f"{case1}_1": "mel",
        f"{case1}_2": "mel",
        f"{case1}_3": "mel",
        "1002039107727665188_1": "other",  # Eczema
        "-2003358831658393077_1": "bkl",  # SK/ISK; its image 2 is case 1's picture again
        "4003844406100696311_1": "bcc",  # a 0.5/0.5 tie: the first written wins
    }
    assert all(c.lesion_id == k.rsplit("_", 1)[0] for k, c in cases.items())
    assert (result.imported, result.skipped_duplicates) == (6, 1)
    assert [(Path(d.file).name, d.row) for d in result.duplicates] == [("scin_cases.csv", 4)]
    assert f"scin:{case1}_1" in result.duplicates[0].reason
    assert rejections(result) == {
        ("scin_cases.csv", 5, "no dermatologist label (not gradable)"),
        ("scin_cases.csv", 6, "image_2_path: image file not found"),
        ("scin_cases.csv", 7, "duplicate case_id (first on row 3)"),
        ("scin_cases.csv", 8, "age is impossible (must be 0-120)"),
        ("scin_cases.csv", 9, "case_id: no row in scin_labels.csv"),
        ("scin_labels.csv", 8, "case_id: not in scin_cases.csv"),
    }
    first = cases[f"{case1}_1"]
    assert (first.age, first.sex, first.site, first.domain) == (35.0, "female", "lower extremity", "clinical")
    assert first.fitzpatrick == 4  # the dermatologist's FST4 over the self-reported FST3
    assert cases["4003844406100696311_1"].fitzpatrick == 5  # no dermatologist label: self-reported
    eczema = cases["1002039107727665188_1"]
    assert (eczema.age, eczema.sex, eczema.fitzpatrick) == (None, None, None)
    assert eczema.extra["condition_symptoms"] == ["itching"] and first.extra["shot_type"] == "CLOSE_UP"


@pytest.mark.parametrize(
    ("group", "age"), [("AGE_30_TO_39", 35.0), ("AGE_18_TO_29", 24.0), ("AGE_80_OR_ABOVE", 85.0), ("AGE_UNKNOWN", None)]
)
def test_scin_age_groups(group, age):
    assert age_of_group(group) == age


def test_scin_needs_its_labels_file(store, tmp_path):
    shutil.copy(FIXTURES / "scin/scin_cases.csv", tmp_path / "scin_cases.csv")
    with pytest.raises(ImportFailed, match="scin_labels.csv"):
        import_dataset(store, "scin", tmp_path / "scin_cases.csv", FIXTURES / "scin")
    labels = FIXTURES / "scin/scin_labels.csv"
    result = import_dataset(store, "scin", tmp_path / "scin_cases.csv", FIXTURES / "scin", labels=labels)
    assert result.imported == 6


def test_folder(store):
    result = run(store, "folder")
    cases = by_id(store, "folder")
    assert {k: c.dx for k, c in cases.items()} == {
        "a/lesion1.jpg": "mel",  # melanoma
        "a/lesion1_followup.jpg": "mel",  # MEL
        "b/x.png": "bcc",  # Basal cell carcinoma
        "c.jpg": "nv",
    }
    assert rejections(result) == {
        ("labels.csv", 6, "unknown diagnosis: not a label this format knows"),
        ("labels.csv", 7, "file: image file not found"),
    }
    first = cases["a/lesion1.jpg"]
    assert (first.age, first.sex, first.site, first.fitzpatrick, first.lesion_id, first.patient_id, first.domain) == (
        61.0,
        "female",
        "posterior torso",
        2,
        "L1",
        "P1",
        "dermoscopy",
    )
    assert first.extra["comment"] == "first visit"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "needs --columns"),
        ("image=file", "dx"),
        ("image=file,dx=diagnosis,colour=c", "unknown field 'colour'"),
        ("image=file,dx", "field=COLUMN"),
    ],
)
def test_folder_columns_spec(spec, message):
    with pytest.raises(ImportFailed, match=message):
        parse_columns(spec)


@pytest.mark.parametrize("module", [ham10000, isic, pad_ufes_20, derm7pt, fitzpatrick17k, scin, folder])
def test_every_label_table_maps_to_our_codes(module):
    assert module.LABELS and set(module.LABELS.values()) <= set(DX_CODES)
    assert all(key == " ".join(key.lower().split()) for key in module.LABELS)  # keyed as label_key() looks up


# ---- the framework: re-import, updates, atomicity, splits ----


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reimport_adds_nothing(store, name):
    first = run(store, name)
    stored = store.cases()
    second = run(store, name)
    assert (second.imported, second.updated) == (0, 0)
    assert second.skipped_duplicates == first.imported + first.skipped_duplicates > 0
    assert rejections(second) == rejections(first)
    assert store.cases() == stored


def test_changed_row_is_updated_and_keeps_its_split(store, tmp_path):
    run(store, "ham10000")
    before = by_id(store, "ham10000")["ISIC_0026769"]
    csv = (FIXTURES / "ham10000/HAM10000_metadata.csv").read_text()
    edited = tmp_path / "HAM10000_metadata.csv"
    edited.write_text(csv.replace("ISIC_0026769,mel,histo,75.0", "ISIC_0026769,mel,histo,76.0"))
    result = import_dataset(store, "ham10000", edited, FIXTURES / "ham10000")
    after = by_id(store, "ham10000")["ISIC_0026769"]
    assert (result.imported, result.updated, result.skipped_duplicates) == (0, 1, 4)
    assert (after.age, after.split) == (76.0, before.split)


def _snapshot(store: CaseStore) -> tuple[list, set[Path]]:
    return store.cases(with_notes=True), {p for p in (store.home / "images").rglob("*") if p.is_file()}


def test_import_failing_while_storing_the_third_row_changes_nothing(store, monkeypatch):
    run(store, "ham10000")
    before = _snapshot(store)
    calls = {"n": 0}
    row_values = CaseStore._row_values

    def fail_on_third(case, split_fixed):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return row_values(case, split_fixed)

    monkeypatch.setattr(CaseStore, "_row_values", staticmethod(fail_on_third))
    with pytest.raises(RuntimeError, match="disk full"):
        run(store, "pad_ufes_20")
    assert calls["n"] == 3  # two PAD-UFES-20 rows were written before the failure, then rolled back
    assert _snapshot(store) == before
    assert store.count(source="pad-ufes-20") == 0


def test_import_failing_after_its_last_row_while_splitting_changes_nothing(store, monkeypatch):
    """Rows and splits are one transaction: a failure in resplit takes every row of the import back."""
    run(store, "ham10000")
    before = _snapshot(store)

    def broken_resplit(*args, **kwargs):
        raise RuntimeError("split failed")

    monkeypatch.setattr(store, "resplit", broken_resplit)
    with pytest.raises(RuntimeError, match="split failed"):
        run(store, "fitzpatrick17k")
    assert _snapshot(store) == before


def test_import_failing_while_writing_the_third_image_changes_nothing(store, monkeypatch):
    run(store, "ham10000")
    before = _snapshot(store)
    calls = {"n": 0}
    put_image = CaseStore.put_image

    def fail_on_third(self, decoded, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return put_image(self, decoded, *args)

    monkeypatch.setattr(CaseStore, "put_image", fail_on_third)
    with pytest.raises(OSError, match="No space left"):
        run(store, "isic")
    assert _snapshot(store) == before  # the two images already written are gone again


def test_an_exception_decoding_one_image_rejects_that_row_only(store, monkeypatch):
    """Before: a TypeError from one photo's corrupt EXIF aborted the whole import, storing 0 cases (issue 13, 4)."""
    import mmcore.importers._files as files

    poisoned = next((FIXTURES / "ham10000").rglob("ISIC_0025030.jpg")).read_bytes()  # the image of row 3

    def fail_on_one(data, *args, **kwargs):
        if data == poisoned:  # by content, not by call order: the images decode in several threads
            raise TypeError("unhashable type: 'IFDRational'")
        return load_image(data, *args, **kwargs)

    monkeypatch.setattr(files, "load_image", fail_on_one)
    result = run(store, "ham10000")
    assert result.imported == 4 and store.count(source="ham10000") == 4
    assert ("HAM10000_metadata.csv", 3, "image_id: image file cannot be read (TypeError)") in rejections(result)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_image_of_a_lesion_or_patient_lands_in_one_split(store, name):
    run(store, name)
    by_group = defaultdict(set)
    for case in store.cases():
        assert case.split in SPLITS
        if case.lesion_id:
            by_group["lesion", case.lesion_id].add(case.split)
        if case.patient_id:
            by_group["patient", case.patient_id].add(case.split)
    assert all(len(splits) == 1 for splits in by_group.values()), dict(by_group)


# ---- unusable input and awkward CSVs ----


def test_unusable_input_fails_with_one_line(store, tmp_path):
    ham = FIXTURES / "ham10000/HAM10000_metadata.csv"
    (tmp_path / "other.csv").write_text("foo,bar\n1,2\n")
    (tmp_path / "header_only.csv").write_text(ham.read_text().splitlines()[0] + "\n")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    cases = [
        (dict(fmt="ham10000", metadata=tmp_path / "absent.csv"), "no such file"),
        (dict(fmt="ham10000", metadata=tmp_path / "other.csv"), "no column of a ham10000 metadata file"),
        (dict(fmt="pad-ufes-20", metadata=ham), "lacks the column(s) img_id, diagnostic"),
        (dict(fmt="ham10000", metadata=tmp_path / "header_only.csv"), "no rows of data"),
        (dict(fmt="ham10000", metadata=tmp_path / "binary.csv"), "not a CSV text file"),
        (dict(fmt="ham10000", metadata=ham, images=tmp_path / "nowhere"), "no such folder"),
        (dict(fmt="ham10000", metadata=ham, labels="x.csv"), "takes no option 'labels'"),
        (dict(fmt="dicom", metadata=ham), "unknown format 'dicom'"),
        (dict(fmt="ham10000", metadata=ham, source="../evil"), "source"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("images", FIXTURES / "ham10000")
        with pytest.raises(ImportFailed) as e:
            import_dataset(store, kwargs.pop("fmt"), kwargs.pop("metadata"), kwargs.pop("images"), **kwargs)
        assert message in str(e.value) and "\n" not in str(e.value)
    assert store.count() == 0


def test_row_numbers_are_spreadsheet_rows(store, tmp_path):
    """Header is row 1; a blank line is a row; a quoted cell spanning two lines is still one row."""
    csv = (
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0027419,bkl,histo,80,male,scalp\n"
        "\n"
        'HAM_2,ISIC_0026769,xyz,histo,75,female,"upper\nback"\n'
        "HAM_3,ISIC_0029176,vasc,histo,45,female,trunk,surplus\n"
        "HAM_4,ISIC_0025030;bkl\n"
    )
    (tmp_path / "meta.csv").write_text(csv)
    result = import_dataset(store, "ham10000", tmp_path / "meta.csv", FIXTURES / "ham10000")
    assert rejections(result) == {
        ("meta.csv", 4, "unknown diagnosis: not a label this format knows"),
        ("meta.csv", 5, "the row has 8 cells but the header has 7"),
        ("meta.csv", 6, "diagnosis is empty"),
    }
    assert result.imported == 1


def test_semicolon_csv_with_bom_and_capitalised_header(store, tmp_path):
    csv = "\ufeffLesion_ID;Image_ID;DX;Age\nHAM_1;ISIC_0027419;bkl;80\n"
    (tmp_path / "meta.csv").write_text(csv, encoding="utf-8")
    result = import_dataset(store, "ham10000", tmp_path / "meta.csv", FIXTURES / "ham10000")
    assert result.imported == 1 and result.rejected == []


def test_image_paths_never_leave_the_images_folder(tmp_path):
    inside = tmp_path / "images"
    (inside / "sub").mkdir(parents=True)
    (inside / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    finder = ImageFinder(inside, depth=1)
    assert finder.by_path("sub/a.jpg") == (inside / "sub" / "a.jpg").resolve()
    assert finder.by_path("a.jpg") == inside / "sub" / "a.jpg"  # found by name one folder down
    assert finder.by_path("../secret.jpg") is None
    assert finder.by_path(str(tmp_path / "secret.jpg")) is None


def test_readers_are_registered_under_the_cli_format_names():
    parser = build_parser()
    for name in READERS.names():
        args = parser.parse_args(["import", "--format", name, "--metadata", "m.csv", "--images", "."])
        assert READERS.get(args.format) is not None


# ---- the command line ----


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["import", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json(home, capsys):
    args = ["--format", "ham10000", "--metadata", str(FIXTURES / "ham10000/HAM10000_metadata.csv")]
    args += ["--images", str(FIXTURES / "ham10000"), "--json"]
    code, out, _ = _cli(capsys, *args)
    payload = json.loads(out)
    assert code == 0 and out.count("\n") == 1
    assert (payload["imported"], payload["skipped_duplicates"], len(payload["rejected"])) == (5, 0, 6)
    # what a job's log keeps: where to look, never why (the reasons are in the owner-only rejections file)
    assert all(set(r) == {"file", "row"} and isinstance(r["row"], int) for r in payload["rejected"])
    assert {r["row"] for r in payload["rejected"]} == {7, 8, 9, 10, 11, 12}
    detail = Path(payload["rejections_file"])
    assert detail.stat().st_mode & 0o777 == 0o600
    reasons = json.loads(detail.read_text())["rejected"]
    assert {(r["row"], r["reason"]) for r in reasons} >= {(9, "image_id: image file not found")}
    with CaseStore(home) as store:
        assert store.count(source="ham10000") == 5

    code, out, _ = _cli(capsys, *args)
    assert code == 0 and (json.loads(out)["imported"], json.loads(out)["skipped_duplicates"]) == (0, 5)


def test_cli_summary_and_options(home, capsys):
    args = ["--format", "folder", "--metadata", str(FIXTURES / "folder/labels.csv")]
    args += ["--images", str(FIXTURES / "folder/photos"), "--columns", FOLDER_COLUMNS, "--source", "clinic-a"]
    code, out, _ = _cli(capsys, *args)
    assert code == 0
    assert out.startswith(f"clinic-a into {home}: imported 4, updated 0, skipped 0 already stored, rejected 2\n")
    assert "rejected: (labels.csv rows 6, 7)" in out and "unicorn" not in out and "e.jpg" not in out


def test_cli_unrecognisable_csv_exits_2_with_one_line(home, capsys, tmp_path):
    (tmp_path / "other.csv").write_text("foo,bar\n1,2\n")
    code, out, err = _cli(capsys, "--format", "isic", "--metadata", str(tmp_path / "other.csv"), "--images", ".")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "no column of a isic metadata file" in err


def test_cli_missing_metadata_exits_2_without_traceback(home, tmp_path):
    env = {**os.environ, "MMDERM_HOME": str(home)}
    args = ["--format", "pad-ufes-20", "--metadata", str(tmp_path / "absent.csv"), "--images", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "mmcore", "import", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == f"error: {tmp_path / 'absent.csv'}: no such file\n"


def test_preview_lists_rejections_and_stores_nothing(home):
    from mmcore.importers import preview_import

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "ham10000"
    preview = preview_import("ham10000", fixtures / "HAM10000_metadata.csv", fixtures)
    assert preview["rows"] == preview["candidates"] + len(preview["rejected"])
    assert preview["rejected"] and all({"file", "row", "reason"} <= set(r) for r in preview["rejected"])
    assert not (home / "cases.sqlite").exists()


# ---- issue 13: confined reads (items 1, 2), reasons without cell values (item 1), safe case ids (item 11) ----


def _jpeg(path: Path, colour=(120, 80, 60)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path, format="JPEG")
    return path


def _ham_csv(path: Path, *image_ids: str) -> Path:
    rows = ["lesion_id,image_id,dx"] + [f"L{i},{image_id},nv" for i, image_id in enumerate(image_ids)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_symlink_out_of_the_images_folder_is_not_followed(store, tmp_path):
    """Before: a symlink inside the images folder imported a file from outside it."""
    images = tmp_path / "images"
    _jpeg(images / "ISIC_1.jpg")
    outside = _jpeg(tmp_path / "elsewhere" / "secret.jpg", colour=(10, 200, 30))
    (images / "ISIC_2.jpg").symlink_to(outside)
    (images / "sub").symlink_to(outside.parent, target_is_directory=True)  # a folder link out, one level down
    (images / "ISIC_3.jpg").symlink_to(images / "ISIC_1.jpg")  # a link that stays inside is fine
    csv = _ham_csv(tmp_path / "meta.csv", "ISIC_1", "ISIC_2", "secret")
    result = import_dataset(store, "ham10000", csv, images)
    assert result.imported == 1 and {c.case_id for c in store.cases()} == {"ham10000:ISIC_1"}
    assert rejections(result) == {
        ("meta.csv", 3, "image_id: image file not found"),
        ("meta.csv", 4, "image_id: image file not found"),
    }
    finder = ImageFinder(images, depth=1)
    assert finder.by_name("ISIC_2.jpg") is None and finder.by_name("secret.jpg") is None
    assert finder.by_name("ISIC_3.jpg") == (images / "ISIC_1.jpg").resolve() and finder.outside == 2


def test_import_roots_confine_every_file_an_import_reads(store, tmp_path):
    """An import given roots (what the app's jobs get) reads only under them, symlinks followed before the check."""
    root = tmp_path / "imports"
    csv = _ham_csv(root / "ham" / "meta.csv", "ISIC_1")
    _jpeg(root / "ham" / "images" / "ISIC_1.jpg")
    outside_csv = _ham_csv(tmp_path / "private" / "meta.csv", "ISIC_1")
    (root / "link.csv").symlink_to(outside_csv)
    (root / "images_link").symlink_to(tmp_path / "private", target_is_directory=True)
    roots = [root]
    refused = [
        (outside_csv, root / "ham" / "images", "metadata CSV is not under an import root"),
        (Path("/etc/passwd"), root / "ham" / "images", "metadata CSV is not under an import root"),
        (root / "link.csv", root / "ham" / "images", "metadata CSV is not under an import root"),
        (csv, root / "images_link", "images folder is not under an import root"),
        (root / "ham" / "../../private/meta.csv", root / "ham" / "images", "not under an import root"),
    ]
    for metadata, images, message in refused:
        with pytest.raises(ImportFailed, match=message):
            import_dataset(store, "ham10000", metadata, images, roots=roots)
    result = import_dataset(store, "ham10000", "ham/meta.csv", "ham/images", roots=roots)  # relative: in the root
    assert result.imported == 1
    with pytest.raises(ImportFailed, match="not under an import root"):  # a companion file is confined too
        import_dataset(
            store, "scin", FIXTURES / "scin/scin_cases.csv", FIXTURES / "scin", roots=[FIXTURES / "scin"],
            labels=outside_csv,
        )  # fmt: skip


def test_a_metadata_csv_over_the_cap_is_refused_before_it_is_read(store, tmp_path):
    csv = _ham_csv(tmp_path / "meta.csv", *(f"ISIC_{i}" for i in range(200)))
    with pytest.raises(ImportFailed, match="a metadata CSV may have at most 0.001 MB"):
        import_dataset(store, "ham10000", csv, tmp_path, max_csv_bytes=1_000)
    from mmcore.importers import preview_import

    with pytest.raises(ImportFailed, match="at most"):
        preview_import("ham10000", csv, tmp_path, max_csv_bytes=1_000)


SECRET = "cookie_secret=s3cr3t"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reasons_name_the_column_and_rule_never_the_cell(store, tmp_path, name):
    """Before: reasons repeated cell values, so a preview of /etc/passwd or secrets.toml came back line by line."""
    fmt, metadata, images, opts = DATASETS[name]
    source = FIXTURES / metadata
    (tmp_path / "meta").mkdir()
    header, *rows = source.read_text().splitlines()
    n_columns = len(header.split(","))
    secret_rows = [",".join(f"{SECRET}{r}{c}" for c in range(n_columns)) for r in range(len(rows))]
    hostile = tmp_path / "meta" / source.name
    hostile.write_text("\n".join([header, *rows, *secret_rows]) + "\n")
    for companion in source.parent.glob("*.csv"):  # derm7pt's index files, SCIN's labels
        if companion.name != source.name:
            lines = companion.read_text().splitlines()
            (tmp_path / "meta" / companion.name).write_text("\n".join([*lines, f"{SECRET}x"]) + "\n")
    from mmcore.importers import preview_import

    options = {k: v for k, v in opts.items() if k != "source"}
    preview = preview_import(fmt, hostile, FIXTURES / images, **options)
    result = import_dataset(store, fmt, hostile, FIXTURES / images, **opts)
    texts = [r["reason"] for r in preview["rejected"]] + preview["warnings"]
    texts += [r.reason for r in result.rejected + result.duplicates] + result.warnings
    assert len(preview["rejected"]) >= len(secret_rows)
    assert not [t for t in texts if "s3cr3t" in t]


def test_a_file_that_is_no_csv_is_refused_without_showing_its_lines(store, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    with pytest.raises(ImportFailed) as e:
        import_dataset(store, "ham10000", passwd, tmp_path)
    assert "root:x" not in str(e.value) and "1 that do not look like column names" in str(e.value)
    with pytest.raises(ImportFailed) as e:
        import_dataset(store, "folder", passwd, tmp_path, columns="image=root:x:0:0:root:/root:/bin/bash,dx=x")
    assert "/bin/bash" not in str(e.value).replace("--columns", "")


def test_case_ids_outside_the_safe_alphabet_are_rejected(store, tmp_path):
    """Before: a dataset's id became part of case_id as it was, and pages drew it with st.markdown."""
    photos = tmp_path / "photos"
    _jpeg(photos / "![x](http:127.0.0.1:9 track.png)")
    _jpeg(photos / "plain name.jpg", colour=(1, 2, 3))
    (tmp_path / "labels.csv").write_text("file,diagnosis\n![x](http:127.0.0.1:9 track.png),nv\nplain name.jpg,mel\n")
    result = import_dataset(store, "folder", tmp_path / "labels.csv", photos, columns="image=file,dx=diagnosis")
    assert {c.case_id for c in store.cases()} == {"folder:plain name.jpg"}
    assert rejections(result) == {
        ("labels.csv", 2, "case_id may hold only letters, digits, space and . _ - + / : (at most 200)")
    }


# ---- issue 14: decoding in threads, re-import keyed by path, size and mtime, resume after a cancel ----


def _noisy_jpegs(folder: Path, n: int) -> list[str]:
    """n distinct small JPEGs named like HAM10000 images; returns their image ids."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    for image_id in ids:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{image_id}.jpg")
    return ids


@pytest.fixture
def counted_decodes(monkeypatch):
    """Every decode of an import, counted (thread-safe)."""
    import threading

    import mmcore.importers._files as files

    count, lock = [0], threading.Lock()

    def counting(data, *args, **kwargs):
        with lock:
            count[0] += 1
        return load_image(data, *args, **kwargs)

    monkeypatch.setattr(files, "load_image", counting)
    return count


def test_reimport_of_unchanged_files_reads_none_of_them(store, tmp_path, monkeypatch, counted_decodes):
    import mmcore.importers._files as files

    ids = _noisy_jpegs(tmp_path / "images", 12)
    csv = _ham_csv(tmp_path / "meta.csv", *ids)
    first = import_dataset(store, "ham10000", csv, tmp_path / "images")
    assert (first.imported, first.files_decoded, first.files_reused, counted_decodes[0]) == (12, 12, 0, 12)
    stored = store.cases()

    def never(*args):
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(files, "read_image_file_stat", never)
    again = import_dataset(store, "ham10000", csv, tmp_path / "images")
    assert (again.imported, again.skipped_duplicates, again.files_decoded, again.files_reused) == (0, 12, 0, 12)
    assert counted_decodes[0] == 12 and store.cases() == stored


def test_a_touched_file_is_hashed_not_decoded_and_a_changed_one_is_decoded(store, tmp_path, counted_decodes):
    from PIL import Image

    ids = _noisy_jpegs(tmp_path / "images", 4)
    csv = _ham_csv(tmp_path / "meta.csv", *ids)
    import_dataset(store, "ham10000", csv, tmp_path / "images")
    before = by_id(store, "ham10000")
    touched, changed = tmp_path / "images" / f"{ids[0]}.jpg", tmp_path / "images" / f"{ids[1]}.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    Image.new("RGB", (32, 24), (200, 30, 30)).save(changed)  # same path, new picture
    result = import_dataset(store, "ham10000", csv, tmp_path / "images")
    assert (result.files_decoded, result.files_reused, result.updated, counted_decodes[0]) == (1, 3, 1, 5)
    after = by_id(store, "ham10000")
    assert after[ids[0]] == before[ids[0]] and after[ids[1]].image_sha256 != before[ids[1]].image_sha256
    again = import_dataset(store, "ham10000", csv, tmp_path / "images")  # the new mtimes are remembered
    assert (again.files_decoded, again.files_reused, counted_decodes[0]) == (0, 4, 5)


def test_the_same_files_in_another_folder_are_not_decoded_again(store, tmp_path, counted_decodes):
    ids = _noisy_jpegs(tmp_path / "images", 5)
    import_dataset(store, "ham10000", _ham_csv(tmp_path / "meta.csv", *ids), tmp_path / "images")
    shutil.copytree(tmp_path / "images", tmp_path / "moved")
    result = import_dataset(store, "ham10000", _ham_csv(tmp_path / "meta.csv", *ids), tmp_path / "moved")
    assert (result.skipped_duplicates, result.files_decoded, result.files_reused, counted_decodes[0]) == (5, 0, 5, 5)


def test_a_cancelled_import_stores_no_case_and_the_next_run_resumes(store, tmp_path, monkeypatch):
    """A cancel mid-import leaves no case stored; the finished batches' files are not decoded by the re-run."""
    import mmcore.importers._files as files

    ids = _noisy_jpegs(tmp_path / "images", 10)
    csv = _ham_csv(tmp_path / "meta.csv", *ids)
    monkeypatch.setattr(files, "BATCH", 3)
    decoded: list[bytes] = []

    def cancel_on_the_seventh(data, *args, **kwargs):
        if len(decoded) == 6:
            raise KeyboardInterrupt  # what Ctrl-C raises; a job's SIGTERM kills the process outright (a crash)
        decoded.append(data)
        return load_image(data, *args, **kwargs)

    monkeypatch.setattr(files, "load_image", cancel_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(store, "ham10000", csv, tmp_path / "images", workers=1)
    assert store.count() == 0  # all or nothing: the cases are one transaction at the end
    decoded.clear()
    monkeypatch.setattr(files, "load_image", lambda data, *a, **k: decoded.append(data) or load_image(data, *a, **k))
    result = import_dataset(store, "ham10000", csv, tmp_path / "images", workers=1)
    assert result.imported == 10 and (result.files_reused, result.files_decoded) == (6, 4) and len(decoded) == 4


def test_imports_decode_in_parallel_and_never_wait_for_upload_slots(store, tmp_path, monkeypatch):
    """Before: one image at a time, and the intake's two upload slots would have capped a pool at two decodes."""
    import threading
    import time

    import mmcore.images as images
    import mmcore.importers._files as files

    ids = _noisy_jpegs(tmp_path / "images", 12)
    running, peak, guard = [0], [0], threading.Lock()

    def slow(data, *args, **kwargs):
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return load_image(data, *args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(files, "load_image", slow)
    monkeypatch.setattr(images, "DECODE_WAIT_S", 0.01)
    csv = _ham_csv(tmp_path / "meta.csv", *ids)
    for _ in range(images.MAX_CONCURRENT_DECODES):  # uploads hold every slot for the whole import
        images._DECODE_SLOTS.acquire()
    try:
        result = import_dataset(store, "ham10000", csv, tmp_path / "images", workers=3)
    finally:
        for _ in range(images.MAX_CONCURRENT_DECODES):
            images._DECODE_SLOTS.release()
    assert result.imported == 12 and not result.rejected and peak[0] == 3


def test_an_error_while_storing_undoes_the_files_and_the_next_run_decodes_them_again(store, tmp_path, counted_decodes):
    """An error (not a cancel) removes the image files it wrote; the rows that named them are not trusted after."""
    ids = _noisy_jpegs(tmp_path / "images", 4)
    csv = _ham_csv(tmp_path / "meta.csv", *ids)
    real_upsert = CaseStore.upsert
    CaseStore.upsert = lambda self, cases: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    try:
        with pytest.raises(OSError, match="No space left"):
            import_dataset(store, "ham10000", csv, tmp_path / "images")
    finally:
        CaseStore.upsert = real_upsert
    assert store.count() == 0 and not [p for p in (store.home / "images").rglob("*") if p.is_file()]
    result = import_dataset(store, "ham10000", csv, tmp_path / "images")
    assert (result.imported, result.files_decoded, counted_decodes[0]) == (4, 4, 8)


# ---- issue 14: a real dataset's layout, without P1 notes, promoted through the CLI, is indexed in full ----


def test_ham10000_without_p1_notes_is_indexed_in_full_after_a_cli_promotion(home, capsys):
    import dataclasses

    from mmcore.cases import DX_CLASSES
    from mmcore.config import load_config
    from mmcore.index import close_indexes, get_index
    from mmcore.model import build_model
    from mmcore.model_store import active_version, save_version

    cfg = dataclasses.replace(load_config("tiny", env={}), home=home)
    metadata = str(FIXTURES / "ham10000/HAM10000_metadata.csv")
    assert main(["import", "--format", "ham10000", "--metadata", metadata, "--images", str(FIXTURES / "ham10000")]) == 0
    with CaseStore(home) as store:
        cases = store.cases(with_notes=True)
    assert cases and all(c.image_path for c in cases) and not any(c.notes.get("P1") for c in cases)
    version = save_version(build_model(cfg.model, DX_CLASSES).eval(), cfg)  # tiny towers, not evaluated
    capsys.readouterr()
    try:
        assert main(["models", "promote", version, "--allow-unevaluated", "--config", "tiny", "--json"]) == 0
        assert active_version(cfg) == version
        image_index = get_index(cfg)._snapshot(version, "image")
        assert sorted(image_index.ids) == sorted(c.case_id for c in cases)  # every case, by its image
        close_indexes()  # the query command opens the index itself
        capsys.readouterr()
        query = ["index", "query", "--text", "pigmented lesion on the back, grown over a year", "--k", "3"]
        assert main([*query, "--config", "tiny", "--json"]) == 0  # a note searched among the photos
    finally:
        close_indexes()
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hits"]
    assert len(hits) == 3 and {h["case_id"] for h in hits} <= {c.case_id for c in cases}
    assert all(h["score"] >= hits[-1]["score"] for h in hits)
