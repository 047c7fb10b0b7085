"""Diagnose page displays (AppTest): the attention view draws one bar per token the encoder read, a repeated word
included (issue 15: category axes merged repeats, so 24 tokens were drawn as 20)."""

from __future__ import annotations

import base64
import json

import numpy as np
from app_helpers import open_page

from pages._lib import loaders

PAGE = "pages/1_Diagnose.py"
NOTE = "Itchy lesion on the back; the lesion is darker than the other lesion and the lesion bled once."


def _values(array) -> np.ndarray:
    """A plotly array as the spec carries it: a list, or typed bytes ({"dtype", "bdata", "shape"})."""
    if isinstance(array, dict):
        flat = np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
        shape = array.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(array)


def _attention_spec(at) -> dict:
    titles = ("(attention rollout)", "rows attend to columns")  # the rollout view, the one-layer-and-head view
    return next(
        (json.loads(c.proto.spec) for c in at.get("plotly_chart") if any(t in c.proto.spec for t in titles)), None
    )


def test_the_attention_view_has_one_category_per_token_repeats_included(app_env):
    at = open_page(PAGE)
    at.text_area(key="diagnose_note").input(NOTE)
    at.button(key="diagnose_run").click().run()
    assert not at.exception
    mask = loaders.get_active_predictor().model.tokenize([NOTE])["attention_mask"]
    n_tokens = int(mask.sum())  # what the encoder read, [CLS] and [SEP] included
    assert _attention_spec(at) is None  # drawn on request only
    at.toggle(key="diagnose_attn_show").set_value(True).run()

    rollout = _attention_spec(at)
    bars, axis = rollout["data"][0], rollout["layout"]["xaxis"]
    assert len(axis["ticktext"]) > len(set(axis["ticktext"]))  # "lesion" (and "the") occur more than once
    positions = list(_values(bars["x"]))
    assert positions == list(range(n_tokens)) == list(_values(axis["tickvals"]))  # one position each, none merged
    assert len(_values(bars["y"])) == len(axis["ticktext"]) == n_tokens

    at.radio(key="diagnose_attn_view").set_value("One layer and head").run()
    heat = _attention_spec(at)["data"][0]
    assert _values(heat["z"]).shape == (n_tokens, n_tokens)
    assert len(set(_values(heat["x"]))) == len(set(_values(heat["y"]))) == n_tokens
