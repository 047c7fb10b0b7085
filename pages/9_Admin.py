"""Admin: datasets, note synthesis, fine-tuning jobs with live curves, model promotion, index, clinicians'
contributions, audit log."""

from __future__ import annotations

import streamlit as st

from pages._lib.admin import render_audit, render_data, render_index, render_models, render_notes, render_training
from pages._lib.auth import require_admin
from pages._lib.feedback import render_review
from pages._lib.widgets import page_setup

page_setup("Admin")
user = require_admin()  # a typed URL shows nothing else to anyone who is not an admin
st.title("Admin")
tabs = st.tabs(["Data", "Notes", "Training", "Models", "Index", "Feedback", "Audit"])
data, notes, training, models, index, feedback, audit = tabs
with data:
    render_data(user.name)
with notes:
    render_notes(user.name)
with training:
    render_training(user.name)
with models:
    render_models(user.name)
with index:
    render_index(user.name)
with feedback:
    render_review(user.name)
with audit:
    render_audit()
