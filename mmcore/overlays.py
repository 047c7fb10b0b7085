"""Heat-map overlays for clinicians: colour maps (matplotlib's), the blend with the photo at an opacity, the outline
of the top-k% region and the colour bar. Arrays and PIL images only.
"""

from __future__ import annotations

import functools

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFilter, ImageFont

COLORMAPS = ("inferno", "jet", "viridis")


@functools.cache
def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colour map."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    lut = _lut(colormap)
    index = (np.clip(np.nan_to_num(heatmap), 0, 1) * 255 + 0.5).astype(np.uint8)
    return lut[index]


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float map resized bilinearly to PIL `size` (width, height)."""
    if heatmap.shape[::-1] == tuple(size):
        return heatmap.astype(np.float32)
    resized = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def top_region(heatmap: np.ndarray, fraction: float) -> np.ndarray:
    """(H, W) bool: the `fraction` of pixels with the highest values (ties broken by position)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = heatmap.ravel()
    n = max(1, int(round(fraction * flat.size)))
    region = np.zeros(flat.size, dtype=bool)
    region[np.argsort(-flat, kind="stable")[:n]] = True
    return region.reshape(heatmap.shape)


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    opacity: float = 0.45,
    colormap: str = "inferno",
    contour_top: float | None = 0.2,
    contour_color: tuple[int, int, int] = (0, 255, 255),
) -> Image.Image:
    """The photo blended with the coloured heat map at `opacity`, and the outline of the top `contour_top` region."""
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    heat = resize_map(heatmap, image.size)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - opacity) * base + opacity * colorize(heat, colormap).astype(np.float32)
    out = Image.fromarray(blended.round().astype(np.uint8))
    if contour_top:
        region = Image.fromarray(top_region(heat, contour_top).astype(np.uint8) * 255)
        width = max(3, (min(image.size) // 150) * 2 + 1)  # an odd filter size: about 2 px per 300 px of image
        edge = np.asarray(region.filter(ImageFilter.MaxFilter(width))) != np.asarray(
            region.filter(ImageFilter.MinFilter(width))
        )
        pixels = np.array(out)
        pixels[edge] = contour_color
        out = Image.fromarray(pixels)
    return out


def colorbar(
    colormap: str = "inferno", length: int = 256, thickness: int = 16, labels: tuple[str, str] = ("low", "high")
) -> Image.Image:
    """A horizontal colour bar with its two end labels, for the legend beside an overlay."""
    bar = np.repeat(colorize(np.linspace(0, 1, length)[None, :], colormap), thickness, axis=0)  # (thickness, L, 3)
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (length, thickness + 14), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((0, thickness + 1), labels[0], fill=(0, 0, 0), font=font)
    right = draw.textlength(labels[1], font=font)
    draw.text((length - right, thickness + 1), labels[1], fill=(0, 0, 0), font=font)
    return canvas
