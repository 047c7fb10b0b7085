"""mmderm home: what this is, the active model's card, and where to go next."""

from __future__ import annotations

import streamlit as st

from pages._lib import loaders
from pages._lib.widgets import page_setup, render_model_card

user = page_setup("Home")
st.title("mmderm: multimodal dermatology AI")
st.markdown(
    "Upload a lesion photo and type a clinical note on **Diagnose** to see model scores per modality, where the "
    "model looked, which words moved it and the most similar past cases. **Similar cases** searches the case "
    "library by image, text or both. **Model report** shows how the active model was evaluated."
)

predictor = None
try:
    predictor = loaders.get_active_predictor()
except Exception as e:  # a broken model folder must not take the home page down
    st.error(f"The active model could not be loaded: {e}")

if predictor is None:
    st.info("No model is built yet. Run `make run` (it builds the demo model) or `python -m mmcore demo`.")
    st.stop()

st.info(
    f"**The active model learned from {predictor.card.trained_on or 'data its card does not describe'}.** "
    "Photos unlike those are flagged and their scores hidden."
)

render_model_card(predictor.card)
c1, c2, c3 = st.columns(3)
c1.page_link("pages/1_Diagnose.py", label="Diagnose a lesion")
c2.page_link("pages/2_Similar_cases.py", label="Search similar cases")
c3.page_link("pages/3_Model_report.py", label="Read the model report")
