"""Admin page (AppTest): only admins; start a tiny training job, watch it finish, promote the new version."""

from __future__ import annotations

import time

from app_helpers import open_page

from mmcore.audit import AuditLog
from mmcore.config import load_config
from mmcore.jobs import JobManager
from mmcore.model_store import active_version, list_versions

PAGE = "pages/9_Admin.py"
ADMIN = {"name": "admin", "role": "admin"}


def _as_admin():
    from app_helpers import ROOT
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["auth_user"] = ADMIN
    at.run()
    return at.switch_page(PAGE).run()


def test_admin_page_stops_for_everyone_else(app_env):
    at = open_page(PAGE)
    assert not at.exception
    assert any("for administrators" in w.value for w in at.warning)
    assert not at.tabs and not at.button


def test_admin_trains_watches_and_promotes(app_env_copy):
    at = _as_admin()
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Data", "Notes", "Training", "Models", "Index", "Feedback", "Audit"]
    before = list_versions(load_config("tiny"))

    at.selectbox(key="admin_train_preset").set_value("tiny")
    at.number_input(key="admin_train_epochs").set_value(3)
    at.number_input(key="admin_train_lr").set_value(0.001)
    at.number_input(key="admin_train_size").set_value(32)
    at.number_input(key="admin_train_batch").set_value(8)
    at.button(key="FormSubmitter:admin_train_form-Start training").click().run()
    assert not at.exception
    assert any("Started job" in s.value for s in at.success), [e.value for e in at.error]

    jobs = JobManager(load_config("tiny"))
    job = jobs.list()[0]
    assert job.kind == "train" and job.user == "admin"
    job = jobs.wait(job.id, timeout=300)
    assert job.status == "succeeded", jobs.log_tail(job.id)
    time.sleep(0.1)
    at.run()  # the page now shows the finished job with its curves
    assert any("succeeded" in m.value for m in at.markdown)
    assert any("epochs logged" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) >= 2

    new = [v for v in list_versions(load_config("tiny")) if v not in before]
    assert len(new) == 1
    at.selectbox(key="admin_promote_version").set_value(new[0]).run()
    at.button(key="admin_promote").click().run()
    assert not at.exception
    assert any(f"{new[0]} is active" in s.value for s in at.success)
    assert active_version(load_config("tiny")) == new[0]
    promoted = AuditLog(load_config("tiny").audit_path).read(event="promote")[-1]
    assert promoted["user"] == "admin" and promoted["model_version"] == new[0]  # written once, by mmcore


def test_bad_training_form_starts_nothing(app_env_copy):
    at = _as_admin()
    at.selectbox(key="admin_train_preset").set_value("tiny")
    at.multiselect(key="admin_train_mix").set_value([])
    n_before = len(JobManager(load_config("tiny")).list())
    at.button(key="FormSubmitter:admin_train_form-Start training").click().run()
    assert not at.exception
    assert any("choose at least one note strategy" in e.value for e in at.error)
    assert len(JobManager(load_config("tiny")).list()) == n_before


def test_audit_tab_checks_the_chain(app_env):
    at = _as_admin()
    assert any("Chain intact" in s.value for s in at.success)


def test_notes_tab_checks_fidelity_on_request(app_env):
    at = _as_admin()
    assert not any("contradicting" in m.label for m in at.metric)  # nothing read until asked
    at.selectbox(key="admin_notes_strategy").set_value("P1").run()
    at.button(key="admin_notes_check").click().run()
    assert not at.exception
    shown = [m for m in at.metric if "contradicting their case" in m.label]
    assert shown and shown[0].value.startswith("0 / ")  # P1 notes are grounded in the case's findings


# ---- issue 13, item 1: the import preview runs as a job, under the import roots, without cell values ----


def _dataset(root):
    from PIL import Image

    photos = root / "clinic" / "photos"
    photos.mkdir(parents=True)
    Image.new("RGB", (24, 16), (150, 90, 60)).save(photos / "p0.jpg")
    (root / "clinic" / "labels.csv").write_text("file,diagnosis\np0.jpg,nv\np1.jpg,cookie_secret=abc123\n")


def _preview(at, metadata: str, images: str):
    at.selectbox(key="admin_import_format").set_value("folder")
    at.text_input(key="admin_import_metadata").input(metadata)
    at.text_input(key="admin_import_images").input(images)
    at.text_input(key="admin_import_columns").input("image=file,dx=diagnosis")
    return at.button(key="FormSubmitter:admin_import_form-Preview rejected rows").click().run()


def test_preview_of_a_server_file_outside_the_import_roots_is_refused(app_env_copy, monkeypatch, tmp_path):
    """Before: the preview read /etc/passwd in the app's process and its lines came back as rejection reasons."""
    monkeypatch.setenv("MMDERM_IMPORT_ROOTS", str(tmp_path / "imports"))
    at = _preview(_as_admin(), "/etc/passwd", "/etc")
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "not under an import root" in shown and "root:x" not in shown
    assert not at.get("arrow_data_frame") or all("root:x" not in str(d.value) for d in at.dataframe)
    assert JobManager(load_config("tiny")).list() == []


def test_preview_runs_as_a_job_and_lists_rows_by_column_and_rule(app_env_copy, monkeypatch, tmp_path):
    root = tmp_path / "imports"
    _dataset(root)
    monkeypatch.setenv("MMDERM_IMPORT_ROOTS", str(root))
    at = _preview(_as_admin(), "clinic/labels.csv", "clinic/photos")
    assert not at.exception, [e.value for e in at.error]
    jobs = JobManager(load_config("tiny"))
    job = jobs.list()[0]
    assert job.kind == "import" and "--dry-run" in job.args and job.user == "admin"
    assert jobs.wait(job.id, timeout=120).status == "succeeded", jobs.log_tail(job.id)
    at.run()
    assert any("1 importable, 1 rejected" in i.value for i in at.info)
    table = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    assert list(table["row"]) == [3] and "abc123" not in str(table.to_dict()) and "p1.jpg" not in str(table.to_dict())
    assert "unknown diagnosis" in table["reason"][0]
