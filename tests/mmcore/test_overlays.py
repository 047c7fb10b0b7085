"""Overlays: matplotlib's colour maps, blend at an opacity, the top-region contour and the colour bar."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmcore.overlays import colorbar, colorize, overlay


def test_colour_map_overlay_contour_and_colour_bar():
    assert colorize(np.array([[0.0, 1.0]])).tolist() == [[[0, 0, 4], [252, 255, 164]]]  # inferno's ends
    with pytest.raises(ValueError, match="colour map"):
        colorize(np.zeros((2, 2)), "rainbow")
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[2:5, 2:5] = 1.0
    assert np.array_equal(np.asarray(overlay(image, heat, opacity=0.0, contour_top=None)), np.asarray(image))
    full = np.asarray(overlay(image, np.ones((8, 8)), opacity=1.0, contour_top=None))
    assert (full == [252, 255, 164]).all()
    outlined = np.asarray(overlay(image, heat, opacity=0.0, colormap="jet", contour_top=0.1))
    edge = (outlined == [0, 255, 255]).all(-1)
    assert edge.any() and not edge[0].any() and not edge[:, -1].any()  # drawn around the hot region only
    bar = colorbar("viridis", length=100)
    assert bar.size[0] == 100 and bar.getpixel((0, 0)) == (68, 1, 84)
