"""The Admin page's sections: data, notes, training jobs, models, index and audit. Each `render_*` draws one tab.

Long work runs as a background job (mmcore.jobs); the page only starts, watches and cancels. The Chroma index is
written by this (the app's) process alone, so promotion and rebuilds run here, with progress. Every choice a form
offers and every change it makes comes from mmcore, which also writes the audit entries.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from pages._lib import loaders
from pages._lib.auth import current_user
from pages._lib.widgets import plain

REFRESH_S = 2  # seconds between redraws of the live views (job table and watcher, model versions, import result)
STATUS_ICON = {"queued": "…", "running": "▶", "cancelling": "■", "succeeded": "✓", "failed": "✗", "cancelled": "■"}


def start_job(build: Any, user: str, *args: Any, **kwargs: Any) -> Any | None:
    """Build the job with one of mmcore.jobs' `*_job` builders and start it; a refusal shows its reason."""
    from mmcore.jobs import JobError

    try:
        job = loaders.get_jobs().start(build(*args, **kwargs), user=user)
    except JobError as e:
        st.error(str(e))
        return None
    st.session_state["admin_watch_job"] = job.id  # the Training tab's watcher switches to the new job
    st.success(f"Started job {job.id} ({job.kind}).")
    return job


# ---- data ----


def render_data(user: str) -> None:
    store = loaders.get_store()
    counts = store.counts()
    st.markdown(f"**{store.count()} cases** in the case store")
    cols = st.columns(4)
    for col, (field, table) in zip(cols, counts.items(), strict=True):
        col.markdown(f"by {field}")
        col.dataframe(pd.DataFrame({"value": list(table), "cases": list(table.values())}), hide_index=True)

    st.markdown("#### Import a dataset")
    from mmcore.importers import import_roots

    roots = ", ".join(f"`{r}`" for r in import_roots(loaders.get_config()))
    st.caption(
        f"Paths on the server, under an import root ({roots}; a relative path starts in the first). Rows that "
        "cannot be imported are listed below with file, row and reason; an import is one transaction, so a failure "
        "halfway loses nothing already stored."
    )
    from mmcore.importers import READERS
    from mmcore.jobs import import_job, synth_job

    with st.form("admin_import_form"):
        c1, c2 = st.columns(2)
        fmt = c1.selectbox("Format", READERS.names(), key="admin_import_format")
        source = c2.text_input("Source name (optional)", key="admin_import_source")
        metadata = c1.text_input("Metadata CSV", key="admin_import_metadata", placeholder="/data/HAM10000_metadata.csv")
        images = c2.text_input("Images folder", key="admin_import_images", placeholder="/data/HAM10000_images")
        columns = st.text_input(
            "Folder format: column mapping", key="admin_import_columns", placeholder="image=file,dx=diagnosis,age=age"
        )
        preview = st.form_submit_button("Preview rejected rows")
        run = st.form_submit_button("Import", type="primary")
    if preview or run:
        if not metadata.strip() or not images.strip():
            st.error("Give both the metadata CSV and the images folder.")
            return
        if preview:
            render_import_preview(fmt, metadata.strip(), images.strip(), columns.strip(), user)
        else:
            job = start_job(import_job, user, fmt, metadata, images, columns=columns, source=source)
            if job is not None:
                st.session_state["admin_import_job"] = job.id
    if st.session_state.get("admin_import_job"):
        render_import_job(st.session_state["admin_import_job"])

    st.markdown("#### Generate SynthDerm cases")
    with st.form("admin_synth_form"):
        c1, c2, c3 = st.columns(3)
        n = c1.number_input("Cases", 10, 100_000, 500, step=10, key="admin_synth_n")
        seed = c2.number_input("Seed", 0, 10_000, 1, key="admin_synth_seed")
        balanced = c3.checkbox("Balanced classes", key="admin_synth_balanced")
        if st.form_submit_button("Generate"):
            start_job(synth_job, user, int(n), int(seed), bool(balanced))


def render_import_preview(fmt: str, metadata: str, images: str, columns: str, user: str) -> None:
    """Start the dry run of an import as a job (it reads only under the import roots); its result shows below."""
    from mmcore.jobs import import_job

    job = start_job(import_job, user, fmt, metadata, images, columns=columns, dry_run=True)
    if job is not None:
        st.session_state["admin_import_job"] = job.id


@st.fragment(run_every=REFRESH_S)
def render_import_job(job_id: int) -> None:
    """The last import or preview started here: status, then its counts and each rejected row with the column and
    rule it broke (the job's owner-only rejections file; the job's log has only row numbers)."""
    if not current_user().is_admin:  # signed out since: this fragment must not answer any more
        return
    jobs = loaders.get_jobs()
    jobs.reap()
    job = jobs.get(job_id)
    what = "Preview" if "--dry-run" in job.args else "Import"
    if job.active:
        st.info(f"{what} (job {job.id}) is {job.status}…")
        return
    report = jobs.import_report(job.id)
    if report is None:  # it stopped before reading a row: its reason, here where Import was pressed
        reason = jobs.failure_reason(job.id) or "it stopped without a result"
        st.error(f"{what} (job {job.id}) {job.status}: {plain(reason)}. Nothing was stored.")
        return
    rejected = report.get("rejected") or []
    if report.get("dry_run"):
        st.info(
            f"Preview (job {job.id}): {report['rows']} rows read, {report['candidates']} importable, "
            f"{len(rejected)} rejected. Nothing was stored."
        )
    else:
        st.success(
            f"Import (job {job.id}) of `{report['source']}`: {report['imported']} imported, {report['updated']} "
            f"updated, {report['skipped_duplicates']} already stored, {len(rejected)} rejected."
        )
    for warning in report.get("warnings") or []:
        st.warning(plain(warning))
    rows = [{"file": r["file"].rsplit("/", 1)[-1], "row": r["row"], "reason": r["reason"]} for r in rejected]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)  # a dataframe draws text, never markdown


# ---- notes ----


def render_notes(user: str) -> None:
    from mmcore.jobs import notes_job
    from mmcore.notes import fidelity_of_notes, strategy_names

    store = loaders.get_store()
    st.markdown("Notes per strategy: " + (", ".join(f"{k}: {v}" for k, v in store.note_strategies().items()) or "none"))
    c1, c2 = st.columns([1, 2])
    strategy = c1.selectbox("Strategy", strategy_names(), key="admin_notes_strategy")
    if c1.button("Generate notes", key="admin_notes_generate"):
        start_job(notes_job, user, strategy)
    # The check reads every note of the strategy: run it when asked, not on every rerun of the page's tabs.
    reports = st.session_state.setdefault("admin_fidelity", {})
    if c1.button("Check fidelity", key="admin_notes_check"):
        reports[strategy] = fidelity_of_notes(store, strategy)
    report = reports.get(strategy)
    if report is None:
        c2.caption("Press **Check fidelity** to compare every note of this strategy with its case.")
        return
    c2.metric(
        "Notes contradicting their case",
        f"{report.get('with_contradictions', 0)} / {report.get('notes', 0)}",
        f"rate {report.get('rate', 0):.1%}",
        delta_color="off",
    )
    examples = report.get("examples") or []
    if examples:
        c2.dataframe(pd.DataFrame(examples), hide_index=True)
    if report.get("with_contradictions") and c2.button("Drop contradicting notes", key="admin_notes_drop"):
        dropped = fidelity_of_notes(store, strategy, True, user, loaders.get_audit())
        reports.pop(strategy, None)
        st.success(f"Dropped {dropped.get('dropped', 0)} notes; regenerate them with **Generate notes**.")


# ---- training ----


def training_form_ui() -> tuple[str, dict[str, Any]] | None:
    """The fine-tuning form; returns (preset, typed overrides) when submitted."""
    from mmcore.config import preset_names
    from mmcore.image_encoders import IMAGE_ENCODERS
    from mmcore.notes import strategy_names
    from mmcore.text_encoders import TEXT_ENCODERS

    modes = {
        "heads": "heads only (cached features, fast on CPU)",
        "partial": "last blocks too (CPU, minutes)",
        "full": "everything (a GPU)",
    }
    with st.form("admin_train_form"):
        c1, c2, c3 = st.columns(3)
        preset = c1.selectbox("Preset", preset_names(), index=preset_names().index("demo"), key="admin_train_preset")
        image_enc = c1.selectbox("Image encoder", ["(preset)", *IMAGE_ENCODERS.names()], key="admin_train_image")
        text_enc = c1.selectbox("Text encoder", ["(preset)", *TEXT_ENCODERS.names()], key="admin_train_text")
        finetune = c2.radio("What trains", list(modes), format_func=modes.get, key="admin_train_finetune")
        epochs = c2.number_input("Epochs", 1, 500, 10, key="admin_train_epochs")
        lr = c2.number_input("Learning rate", 1e-6, 0.5, 1e-3, format="%.6f", key="admin_train_lr")
        size = c2.number_input("Image size", 16, 1024, 224, step=16, key="admin_train_size")
        batch = c2.number_input("Batch size", 2, 4096, 32, key="admin_train_batch")
        mix = c3.multiselect("Note strategies (one drawn per sample)", strategy_names(), ["P1"], key="admin_train_mix")
        ntxent = c3.number_input("NT-Xent weight", 0.0, 10.0, 0.5, key="admin_train_ntxent")
        align = c3.number_input("Cosine and L1 weight", 0.0, 10.0, 1.0, key="admin_train_align")
        gpus = c3.number_input("GPUs (torchrun when > 1)", 0, 16, 0, key="admin_train_gpus")
        if not st.form_submit_button("Start training", type="primary"):
            return None
    overrides: dict[str, Any] = {
        "train.finetune": finetune,
        "train.epochs": int(epochs),
        "train.lr": float(lr),
        "model.image_size": int(size),
        "train.batch_size": int(batch),
        "train.note_strategies": list(mix),
        "loss.ntxent": float(ntxent),
        "loss.cosine": float(align),
        "loss.l1": float(align),
        "jobs.gpus": int(gpus),
    }
    if image_enc != "(preset)":
        overrides["model.image_encoder"] = image_enc
    if text_enc != "(preset)":
        overrides["model.text_encoder"] = text_enc
    return preset, overrides  # promotion happens on the Models tab, in this process, which owns the case index


def render_training(user: str) -> None:
    from mmcore.jobs import train_job

    submitted = training_form_ui()
    if submitted is not None:
        start_job(train_job, user, *submitted)
    render_jobs(user)


@st.fragment(run_every=REFRESH_S)
def render_jobs(user: str) -> None:
    """The job table and the watched job, redrawn together every REFRESH_S seconds: the table's status never lags
    the watcher's (they were drawn apart, and the table only moved when the whole page reran)."""
    if not current_user().is_admin:  # signed out since: this fragment must not answer any more
        return
    jobs = loaders.get_jobs()
    jobs.reap()
    if "admin_jobs_error" in st.session_state:
        st.error(st.session_state.pop("admin_jobs_error"))
    recent = jobs.list(limit=20)
    if not recent:
        st.caption("No jobs yet.")
        return
    table = pd.DataFrame(
        [
            {
                "id": j.id,
                "kind": j.kind,
                "status": f"{STATUS_ICON.get(j.status, '')} {j.status}",
                "by": j.user,
                "error": j.error,
            }
            for j in recent
        ]
    )
    st.dataframe(table, hide_index=True)
    ids = [j.id for j in recent]
    # A job started or resumed since is watched next; the widget's own value is set before the widget is drawn.
    watched = st.session_state.pop("admin_watch_job", None)
    if watched in ids:
        st.session_state["admin_watch_select"] = watched
    elif st.session_state.get("admin_watch_select") not in ids:
        st.session_state["admin_watch_select"] = ids[0]
    job_id = st.selectbox("Watch job", ids, key="admin_watch_select")
    render_job(jobs.get(job_id), user)


def resume_job(job_id: int, user: str) -> None:
    """The Resume button's callback: it runs before the view redraws, so the table and the watcher show the new job."""
    from mmcore.jobs import JobError

    if not current_user().is_admin:  # a click that arrives after the session signed out acts for no one
        return
    try:
        st.session_state["admin_watch_job"] = loaders.get_jobs().resume(job_id, user=user).id
    except JobError as e:
        st.session_state["admin_jobs_error"] = str(e)


def render_job(job: Any, user: str) -> None:
    """Status, loss and metric curves, log tail, cancel and resume for one job (inside render_jobs' refresh)."""
    import plotly.graph_objects as go

    jobs = loaders.get_jobs()
    c1, c2, c3 = st.columns([2, 1, 1])
    reason = jobs.failure_reason(job.id) if job.status == "failed" else job.error  # the command's own words
    c1.markdown(
        f"**Job {job.id}** · {job.kind} · {STATUS_ICON.get(job.status, '')} **{job.status}**"
        + (f" · {plain(reason)}" if reason else "")
    )
    if job.status == "running" and c2.button("Cancel", key=f"admin_cancel_{job.id}"):
        jobs.cancel(job.id, user)
    if job.kind == "train" and job.status in ("failed", "cancelled"):
        c3.button("Resume", key=f"admin_resume_{job.id}", on_click=resume_job, args=(job.id, user))
    metrics = jobs.metrics(job.id)
    if metrics:
        frame = pd.DataFrame(metrics)
        x = frame.get("epoch", frame.index)
        losses = [c for c in frame.columns if c.endswith("loss")]
        scores = [c for c in frame.columns if c.startswith("val_") and not c.endswith("loss")]
        g1, g2 = st.columns(2)
        fig = go.Figure([go.Scatter(x=x, y=frame[c], name=c, mode="lines+markers") for c in losses])
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), title="Loss", xaxis_title="epoch")
        g1.plotly_chart(fig, key=f"admin_loss_{job.id}")
        fig = go.Figure([go.Scatter(x=x, y=frame[c], name=c, mode="lines+markers") for c in scores])
        fig.update_layout(
            height=300,
            margin=dict(l=10, r=10, t=30, b=10),
            title="Validation",
            xaxis_title="epoch",
            yaxis=dict(range=[0, 1]),
        )
        g2.plotly_chart(fig, key=f"admin_val_{job.id}")
        st.caption(f"{len(metrics)} epochs logged")
    with st.expander("Log", expanded=job.status in ("failed",)):
        st.code(jobs.log_tail(job.id, 30) or "(empty)", language=None)


# ---- models ----


@st.fragment(run_every=REFRESH_S)
def render_models(user: str) -> None:
    """The versions, redrawn every REFRESH_S seconds (a version a training job registers appears by itself), the
    model cards side by side, and promotion: asked for, confirmed, then run with its progress."""
    from mmcore.model_store import ModelStoreError, active_version, list_versions, read_card

    if not current_user().is_admin:  # signed out since: this fragment must not act for anyone any more
        return
    confirmed = st.session_state.pop("admin_promote_go", None)
    if confirmed:  # the admin said yes (a callback): promote first, so the table below shows the outcome
        st.session_state["admin_promote_outcome"] = promote(
            confirmed["version"], user, allow_unevaluated=confirmed["override"]
        )
    cfg = loaders.get_config()
    versions = list_versions(cfg)
    if not versions:
        st.info("No model versions yet: train one.")
        return
    active = active_version(cfg)
    cards = {}
    for v in versions:
        try:
            cards[v] = read_card(cfg, v)
        except ModelStoreError as e:
            st.warning(f"{v}: {e}")
    rows = []
    for v in reversed(list(cards)):
        card = cards[v]
        head = card.headline
        fused = head.modalities.get("fused") if head else None
        rows.append(
            {
                "version": v,
                "active": "yes" if v == active else "",
                "trained on": card.trained_on,
                "what trained": card.training.finetune,
                "image encoder": card.encoders["image"].name if "image" in card.encoders else "?",
                "text encoder": card.encoders["text"].name if "text" in card.encoders else "?",
                "test balanced acc. (fused)": f"{fused.balanced_accuracy:.3f}" if fused else "n/a (not evaluated)",
                "evaluated": "yes" if card.evaluated else "NO",
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    chosen = st.multiselect("Compare model cards", list(cards), default=[active] if active else [], key="admin_compare")
    if chosen:
        cols = st.columns(len(chosen))
        for col, v in zip(cols, chosen, strict=True):
            col.markdown(f"**{v}**")
            col.json(cards[v].to_dict(), expanded=False)
    render_promotion(cards, active, user)


def render_promotion(cards: dict[str, Any], active: str | None, user: str) -> None:
    """Choose a version, confirm, promote. A version without a test evaluation is refused unless the admin ticks the
    override (mmcore's allow_unevaluated, which its audit entry records)."""
    c1, c2 = st.columns(2)
    target = c1.selectbox("Version", list(reversed(list(cards))), key="admin_promote_version")
    if target is None:
        return
    order = list(cards)
    label = "Roll back to" if active in order and order.index(target) < order.index(active) else "Promote"
    evaluated = cards[target].evaluated
    override = False
    if not evaluated:
        c2.warning(f"{target} has no test evaluation: nobody has measured how it scores.")
        override = c2.checkbox("Promote it anyway (recorded in the audit log)", key="admin_promote_override")
    c1.button(
        f"{label} {target}",
        key="admin_promote",
        disabled=target == active or (not evaluated and not override),
        help="Refused without a test evaluation unless you tick the override." if not evaluated else None,
        on_click=_ask_promotion,
        args=({"version": target, "override": override},),
    )
    pending = st.session_state.get("admin_promote_pending")
    if pending == {"version": target, "override": override}:
        render_promotion_confirm(target, label, active, evaluated)
    elif pending:  # the choice changed after the question was asked: ask again
        st.session_state.pop("admin_promote_pending", None)
    outcome = st.session_state.get("admin_promote_outcome")
    if outcome:  # kept across the view's refreshes until the next promotion is asked for
        (st.success if outcome["ok"] else st.error)(outcome["text"])


def _ask_promotion(choice: dict[str, Any]) -> None:
    st.session_state["admin_promote_pending"] = choice
    st.session_state.pop("admin_promote_outcome", None)


def _answer_promotion(yes: bool) -> None:
    """The question's buttons (callbacks, so the view redraws once, already knowing the answer)."""
    choice = st.session_state.pop("admin_promote_pending", None)
    if yes and choice:
        st.session_state["admin_promote_go"] = choice


def render_promotion_confirm(target: str, label: str, active: str | None, evaluated: bool) -> None:
    """The question before a promotion: what changes for whom, and what it will cost."""
    cases = loaders.get_store().count()
    instead = f", in place of `{active}`" if active else ""
    what = f"**{label} {target}?** Every page then uses it for every user{instead}"
    what += f". All {cases:,} cases are embedded and indexed first; until then `{active or 'nothing'}` stays active."
    if not evaluated:
        what += f" **{target} has no test evaluation**: the audit log records that you promoted it anyway."
    st.warning(what)
    b1, b2 = st.columns([1, 4])
    b1.button(
        f"Yes, {label.lower()} {target}",
        key="admin_promote_confirm",
        type="primary",
        on_click=_answer_promotion,
        args=(True,),
    )
    b2.button("Cancel", key="admin_promote_cancel", on_click=_answer_promotion, args=(False,))


class PromotionProgress:
    """The promotion's progress bar: the stage and its counts as mmcore words them, and an ETA for the whole promotion
    from the time elapsed and the fraction done so far.

    mmcore calls it with (fraction, text), text such as "embedding images: 1,200 of 10,015 · 0:12 elapsed, about 1:30
    left", and with `stage`, `done` and `total` by keyword where it knows them; other keywords are ignored.
    """

    _COUNTS = re.compile(r"^(?P<stage>[^:·]*?)\s*:\s*(?P<done>[\d,]+) of (?P<total>[\d,]+)(?P<unit>[^·]*)")

    def __init__(self, bar: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.bar = bar
        self.clock = clock
        self.started = clock()
        # The time left is from the rate since the last report at 0%: loading the version and planning are paid
        # once, not at the rate of the work that follows (they made a 10,015-case promotion's first estimates ~45%
        # long; bench/results/scale.md).
        self.rate_from = self.started

    def __call__(
        self,
        fraction: float,
        text: str = "",
        *,
        stage: str = "",
        done: int | None = None,
        total: int | None = None,
        **_: Any,
    ) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        if fraction == 0.0:
            self.rate_from = self.clock()
        self.bar.progress(fraction, text=self.describe(fraction, text, stage, done, total))

    def describe(
        self, fraction: float, text: str = "", stage: str = "", done: int | None = None, total: int | None = None
    ) -> str:
        """ "37% · embedding images 1,200 of 10,015 · 0:42 elapsed, about 1:12 left"."""
        from mmcore.embeddings import clock

        head = text.split(" · ", 1)[0].strip()  # mmcore's own step timing gives way to the whole promotion's
        match = self._COUNTS.match(head)
        if match:  # the text's own wording: stage, counts and their unit
            label = f"{match['stage']} {match['done']} of {match['total']}{match['unit'].rstrip()}"
        elif done is not None and total:
            label = f"{head or stage} {done:,} of {total:,}"
        else:
            label = head or stage
        now = self.clock()
        timing = f"{clock(now - self.started)} elapsed"
        if 0.02 <= fraction < 1.0:  # before 2% the estimate is noise
            timing += f", about {clock((now - self.rate_from) * (1 - fraction) / fraction)} left"
        return " · ".join(part for part in (f"{fraction:.0%}", label.strip(), timing) if part)


def promote(version: str, user: str, allow_unevaluated: bool = False) -> dict[str, Any]:
    """mmcore's one promotion (every case embedded and indexed, then the version goes active, audited by mmcore),
    with a progress bar; returns the outcome to show: {"ok": bool, "text": str}."""
    from mmcore.embeddings import clock
    from mmcore.model_store import ModelStoreError
    from mmcore.model_store import promote as promote_version

    progress = PromotionProgress(st.progress(0.0, text=f"Preparing {version}…"))
    try:
        result = promote_version(
            loaders.get_config(), version, user, progress=progress, allow_unevaluated=allow_unevaluated
        )
    except ModelStoreError as e:
        return {"ok": False, "text": f"Not promoted, the active model is unchanged: {e}"}
    except Exception as e:  # noqa: BLE001 - the page shows a reason, the log the details
        import logging

        logging.getLogger("mmderm").exception("promotion failed")
        return {
            "ok": False,
            "text": f"Promotion failed, the active model is unchanged ({type(e).__name__}); details in the server log.",
        }
    return {
        "ok": True,
        "text": f"{version} is active: {result.indexed.get('image', 0):,} images and {result.indexed.get('text', 0):,} "
        f"notes indexed ({result.embedded.without_note:,} cases without a note) in {clock(result.seconds)}.",
    }


# ---- index and audit ----


def render_index(user: str) -> None:
    from mmcore.index import get_index
    from mmcore.model_store import active_version

    cfg = loaders.get_config()
    version = active_version(cfg)
    if version is None:
        st.info("No active model.")
        return
    counts = get_index(cfg).counts(version)
    total = loaders.get_store().count()
    c1, c2, c3 = st.columns(3)
    c1.metric("Cases in the store", f"{total:,}")
    c2.metric(
        "Indexed by image",
        f"{counts.get('image', 0):,}",
        f"{counts.get('image', 0) - total:+,} vs store",
        delta_color="off",
    )
    c3.metric(
        "Indexed by note",
        f"{counts.get('text', 0):,}",
        f"{counts.get('text', 0) - total:+,} vs store",
        delta_color="off",
    )
    st.caption(f"Index of `{version}`. A case without any note is found by its image only.")
    if st.button("Rebuild the index from the case store", key="admin_index_rebuild"):
        outcome = promote(version, user, allow_unevaluated=True)  # the active version again: nothing to guard
        (st.success if outcome["ok"] else st.error)(outcome["text"])


def render_audit() -> None:
    """The chain check (signatures and anchor too), then the entries filtered by event and user; a damaged line is
    listed as one, never raised."""
    log = loaders.get_audit()
    report = log.verify()
    if report.ok:
        st.success(
            f"Chain intact: {report.entries} entries, {report.signed} signed with the audit key, none missing from "
            "the end."
        )
    else:
        where = f" at line {report.first_bad_line}" if report.first_bad_line else ""
        st.error(f"Chain broken{where}: {report.reason}.")
    c1, c2 = st.columns(2)
    entries = log.read()
    events = sorted({e.get("event", "") for e in entries})
    users = sorted({e.get("user", "") for e in entries})
    event = c1.selectbox("Event", ["(all)", *events], key="admin_audit_event")
    who = c2.selectbox("User", ["(all)", *users], key="admin_audit_user")
    shown = [
        e for e in entries if (event == "(all)" or e.get("event") == event) and (who == "(all)" or e.get("user") == who)
    ]
    if shown:
        frame = pd.DataFrame(shown[-500:][::-1]).drop(columns=["prev", "hash", "mac"], errors="ignore")
        st.dataframe(frame, hide_index=True)
