"""The draft description's helpers: a rough lesion outline that survives uneven light, and where the saliency lies
relative to it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcore.draft import _lesion_estimate, _where_it_looked


def test_the_drafts_lesion_outline_survives_uneven_light():
    ys, xs = np.mgrid[0:120, 0:160]
    light = 120 + 100 * xs / 160  # a phone photo's light falling off from right to left
    lesion = (ys - 70) ** 2 + (xs - 90) ** 2 < 15**2
    grey = np.where(lesion, light * 0.55, light)
    estimate = _lesion_estimate(Image.fromarray(np.repeat(grey[..., None], 3, -1).astype(np.uint8)))
    assert (estimate & lesion).sum() / (estimate | lesion).sum() > 0.7  # not the dim half of the photo


def test_where_it_looked_names_inside_or_outside_the_lesion():
    ys, xs = np.mgrid[0:120, 0:120]
    lesion = (ys - 60) ** 2 + (xs - 60) ** 2 < 35**2
    photo = Image.fromarray(np.repeat(np.where(lesion, 70, 200)[..., None], 3, -1).astype(np.uint8))
    inside = np.exp(-((ys - 60) ** 2 + (xs - 60) ** 2) / 300.0).astype(np.float32)
    corner = np.exp(-((ys - 10) ** 2 + (xs - 110) ** 2) / 300.0).astype(np.float32)
    assert "mostly inside the darker lesion area" in _where_it_looked(photo, inside)
    said = _where_it_looked(photo, corner)
    assert "mostly outside" in said and "upper right" in said
