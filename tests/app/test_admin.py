"""Admin page (AppTest): only admins; start a tiny training job, watch it finish, promote the new version."""

from __future__ import annotations

import time

import pytest
from app_helpers import open_page

from mmcore.audit import AuditLog
from mmcore.config import load_config
from mmcore.jobs import JobManager
from mmcore.model_store import active_version, list_versions
from pages._lib.admin import PromotionProgress
from pages._lib.widgets import plain

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


@pytest.fixture
def timers(monkeypatch):
    """What the browser's timers do between clicks: `timers(at)` reruns only the fragments the last run drew with
    `run_every` (not the page), and returns that run's elements."""
    from streamlit.testing.v1 import local_script_runner as runner

    timed: dict[str, float] = {}
    queue: list[str] = []
    real_parse, real_rerun_data = runner.parse_tree_from_messages, runner.RerunData

    def parse(msgs):
        timed.update({m.auto_rerun.fragment_id: m.auto_rerun.interval for m in msgs if m.HasField("auto_rerun")})
        return real_parse(msgs)

    def rerun_data(**kwargs):
        return real_rerun_data(**kwargs, fragment_id_queue=list(queue)) if queue else real_rerun_data(**kwargs)

    monkeypatch.setattr(runner, "parse_tree_from_messages", parse)
    monkeypatch.setattr(runner, "RerunData", rerun_data)

    def tick(at):
        assert timed, "the page drew no view that refreshes by itself"
        queue[:] = list(timed)
        try:
            return at.run()
        finally:
            queue.clear()

    return tick


def test_admin_trains_watches_and_promotes(app_env_copy, timers, monkeypatch):
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
    new = [v for v in list_versions(load_config("tiny")) if v not in before]
    assert len(new) == 1
    time.sleep(0.1)

    # Issue 15: with no click and no reload, the views' own refresh shows the finished job and its version.
    live = timers(at)
    assert not at.exception
    assert not at.title, "the whole page reran; only the live views should have"
    table = next(d.value for d in live.dataframe if "status" in d.value.columns)
    assert table.loc[table["id"] == job.id, "status"].item() == "✓ succeeded"
    assert any("succeeded" in m.value for m in live.markdown)  # the watcher agrees with the table
    assert any("epochs logged" in c.value for c in live.caption)
    assert len(live.get("plotly_chart")) >= 2
    models = next(d.value for d in live.dataframe if "version" in d.value.columns)
    assert new[0] in list(models["version"])
    assert new[0] in live.selectbox(key="admin_promote_version").options

    at.run()
    shown = []
    real_describe = PromotionProgress.describe

    def describe(*args, **kwargs):
        shown.append(real_describe(*args, **kwargs))
        return shown[-1]

    monkeypatch.setattr(PromotionProgress, "describe", describe)
    at.selectbox(key="admin_promote_version").set_value(new[0]).run()
    at.button(key="admin_promote").click().run()
    assert any(f"Promote {new[0]}?" in w.value for w in at.warning)  # asked first, nothing changed yet
    assert active_version(load_config("tiny")) != new[0]
    at.button(key="admin_promote_confirm").click().run()
    assert not at.exception
    assert any(f"{new[0]} is active" in s.value for s in at.success)
    assert active_version(load_config("tiny")) == new[0]
    assert any(" of " in t and "elapsed" in t for t in shown), shown  # stage, counts and time on the bar
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


# ---- issue 15: promotion asks first and refuses an unevaluated version without the override ----


def _unevaluated_version() -> str:
    """A new version with the active weights and no test evaluation (what a training run without eval leaves)."""
    from mmcore.model_store import load_version, read_card, save_version

    cfg = load_config("tiny")
    version = save_version(load_version(cfg).model, cfg)
    assert not read_card(cfg, version).evaluated
    return version


def test_promotion_asks_first_and_refuses_an_unevaluated_version_unless_overridden(app_env_copy):
    version = _unevaluated_version()
    before = active_version(load_config("tiny"))
    at = _as_admin()
    at.selectbox(key="admin_promote_version").set_value(version).run()
    assert any(f"{version} has no test evaluation" in w.value for w in at.warning)
    assert at.button(key="admin_promote").disabled  # refused as it stands

    at.checkbox(key="admin_promote_override").check().run()
    at.button(key="admin_promote").click().run()
    question = next(w.value for w in at.warning if f"Promote {version}?" in w.value)
    assert "has no test evaluation" in question and "audit log" in question
    at.button(key="admin_promote_cancel").click().run()
    assert not any(f"Promote {version}?" in w.value for w in at.warning)
    assert active_version(load_config("tiny")) == before

    at.button(key="admin_promote").click().run()
    at.button(key="admin_promote_confirm").click().run()
    assert not at.exception
    assert any(f"{version} is active" in s.value for s in at.success), [e.value for e in at.error]
    assert active_version(load_config("tiny")) == version
    entry = AuditLog(load_config("tiny").audit_path).read(event="promote")[-1]
    assert entry["user"] == "admin" and entry["model_version"] == version and entry["unevaluated"] is True


def test_the_promotion_bar_shows_stage_counts_and_an_eta_from_the_elapsed_time():
    class Bar:
        def progress(self, value, text):
            self.value, self.text = value, text

    now = [100.0]
    bar = Bar()
    progress = PromotionProgress(bar, clock=lambda: now[0])
    progress(0.0, "loading v0003")
    assert bar.text == "0% · loading v0003 · 0:00 elapsed"  # no estimate before any work is done
    now[0] = 110.0  # loading and planning: paid once, not part of the rate of the work that follows
    progress(0.0, "embedding 10,015 images and 10,015 notes", stage="planned")
    assert bar.text == "0% · embedding 10,015 images and 10,015 notes · 0:10 elapsed"
    now[0] = 140.0  # 30 s for the first quarter: about 90 s for the rest
    progress(0.25, "embedding images: 1,200 of 10,015 · 0:29 elapsed, about 3:30 left")
    assert bar.value == 0.25
    assert bar.text == "25% · embedding images 1,200 of 10,015 · 0:40 elapsed, about 1:30 left"
    progress(0.9, "indexing: 900 of 1,000 vectors · 0:05 elapsed", stage="indexing", done=900, total=1000)
    assert bar.text == "90% · indexing 900 of 1,000 vectors · 0:40 elapsed, about 0:03 left"
    progress(0.5, "", stage="embedding notes", done=3, total=8)  # done/total per stage, by keyword alone
    assert bar.text == "50% · embedding notes 3 of 8 · 0:40 elapsed, about 0:30 left"
    progress(0.6, "embedding notes", done=4, total=8, modality="text")  # a keyword it does not know is ignored
    assert bar.text == "60% · embedding notes 4 of 8 · 0:40 elapsed, about 0:20 left"
    progress(1.0, "v0003 is active", stage="done")
    assert bar.text == "100% · v0003 is active · 0:40 elapsed"


# ---- issue 15: an import's failure says why, where Import was pressed ----


def test_an_import_failure_shows_its_reason_under_the_import_button(app_env_copy, monkeypatch, tmp_path):
    root = tmp_path / "imports"
    _dataset(root)
    monkeypatch.setenv("MMDERM_IMPORT_ROOTS", str(root))
    at = _as_admin()
    at.selectbox(key="admin_import_format").set_value("folder")
    at.text_input(key="admin_import_metadata").input("clinic/labels.csv")
    at.text_input(key="admin_import_images").input("clinic/photos")
    at.text_input(key="admin_import_columns").input("image=filename,dx=diagnosis")  # the CSV has no "filename"
    at.button(key="FormSubmitter:admin_import_form-Import").click().run()
    assert not at.exception, [e.value for e in at.error]
    jobs = JobManager(load_config("tiny"))
    job = jobs.wait(jobs.list()[0].id, timeout=120)
    assert job.status == "failed" and job.error == "exit code 2"
    at.run()
    shown = [e.value for e in at.error if f"job {job.id}" in e.value]
    assert len(shown) == 1 and "exit code" not in shown[0]
    reason = jobs.failure_reason(job.id)
    assert "lacks the column(s) filename" in reason and plain(reason) in shown[0]  # drawn as text, not markdown
