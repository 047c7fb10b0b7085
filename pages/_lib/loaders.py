"""The app's only cached resources: config, case store, Predictor (one per model version), job manager."""

from __future__ import annotations

from typing import Any

import streamlit as st

from mmcore.config import Config, load_config


@st.cache_resource(show_spinner=False)
def get_config() -> Config:
    return load_config()


@st.cache_resource(show_spinner=False)
def get_store() -> Any:
    from mmcore.cases import CaseStore

    return CaseStore(get_config().home)


def active_version() -> str | None:
    from mmcore.model_store import active_version as _active

    try:
        return _active(get_config())
    except Exception:
        return None


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def get_predictor(version: str) -> Any:
    """One Predictor per model version, shared by every session (it serialises what must be serialised). Its
    first-call costs (Captum, the explainer copy, the case index) are paid in the background right away, so the first
    Analyse does not wait for them."""
    import threading

    from mmcore.predictor import Predictor

    predictor = Predictor.from_config(get_config(), version=version)
    threading.Thread(target=_warm, args=(predictor,), name="mmderm-warm-up", daemon=True).start()
    return predictor


def _warm(predictor: Any) -> None:
    try:
        predictor.warm_up()
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first request pays; the log says why
        import logging

        logging.getLogger("mmderm").exception("warm-up failed")


@st.cache_resource(show_spinner=False)
def get_executor() -> Any:
    """Threads for work a page starts and collects later in the same run (similar cases beside the explanation)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="mmderm-page")


def get_active_predictor() -> Any | None:
    version = active_version()
    return get_predictor(version) if version else None


def require_predictor() -> Any:
    """The active model's Predictor, or a plain message and a stop when no model is active yet."""
    predictor = get_active_predictor()
    if predictor is None:
        st.info("No model is active yet. Run `make run` or ask an admin to promote one.")
        st.stop()
    return predictor


@st.cache_resource(show_spinner=False)
def get_jobs() -> Any:
    from mmcore.jobs import JobManager

    return JobManager(get_config())


@st.cache_resource(show_spinner=False)
def get_audit() -> Any:
    from mmcore.audit import AuditLog

    return AuditLog(get_config().audit_path)


def safe_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into mmcore; a rejected input shows its message, anything else a short error (details in the log)."""
    from mmcore.images import ImageRejected

    try:
        return fn(*args, **kwargs)
    except ImageRejected as e:
        st.error(f"This photo cannot be used: {e}")
    except ValueError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - the page must not show a traceback
        import logging

        logging.getLogger("mmderm").exception("page call failed")
        st.error(f"Something went wrong ({type(e).__name__}). The details are in the server log.")
    return None


@st.cache_resource(show_spinner=False)
def get_examples() -> list[dict[str, Any]]:
    """The example photos in assets/examples (made by assets/make_examples.py), with their notes and labels."""
    import json
    from pathlib import Path

    from mmcore.cases import DX_NAMES

    folder = Path(__file__).resolve().parents[2] / "assets" / "examples"
    out = []
    for item in json.loads((folder / "index.json").read_text()):
        dx, domain = item["dx"], item["domain"]
        label = f"{DX_NAMES.get(dx, dx)} ({domain})" if dx else "Not a lesion: a page of text"
        caption = f"SynthDerm drawing: {label}" if dx else "Not a skin lesion: see what the model says"
        out.append(
            {"label": label, "caption": caption, "note": item["note"], "bytes": (folder / item["file"]).read_bytes()}
        )
    return out


def get_evaluations(version: str) -> dict[str, Any]:
    """name ("test_clinical") -> evaluation result of a model version (read fresh: evaluations can be added)."""
    from mmcore.evaluate import read_evaluations

    return read_evaluations(get_config(), version)
