"""The verdict on a request's inputs, drawn before anything else: out-of-distribution inputs are said to be so in
plain words, and their class scores stay hidden until the clinician explicitly asks for them."""

from __future__ import annotations

from typing import Any

import streamlit as st


def render_verdict(check: Any, key: str) -> bool:
    """Draw the verdict of an mmcore.trust.InputCheck; returns whether class scores may be shown."""
    if check.in_distribution is None:
        st.info(
            "This model version has no out-of-distribution gate: nothing checks whether your inputs are like the "
            "cases it learned from."
        )
        return True
    if check.in_distribution:
        return True
    st.error("**Outside what this model knows.** " + " ".join(check.reasons))
    if not st.toggle("Show the scores anyway", key=key, value=False):
        st.caption("The class scores are hidden. The saliency map below still shows where the model looked.")
        return False
    st.warning("Shown on request: these scores come from a model that has not learned from inputs like these.")
    return True


def render_similar_warning(check: Any) -> None:
    """Similar cases of an out-of-distribution photo are nearest only in a space the photo does not belong to."""
    if check.in_distribution is False:
        st.warning(
            "These cases are the nearest only in the model's own space, which this input does not belong to: "
            "they are not similar in any clinical sense."
        )
