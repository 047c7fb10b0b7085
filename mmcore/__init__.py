"""mmcore: the shared model package of mmderm. Research software, never a diagnosis.

One module, one job (see DESIGN.md section 3); mmcore never imports streamlit.
"""

__version__ = "0.1.0"
DISCLAIMER = (
    "Research software. Not a medical device and not for diagnosis: model scores are not probabilities of "
    "disease and must never replace the judgement of a clinician or a biopsy."
)
