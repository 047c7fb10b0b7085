"""SynthDerm's acquisition views: how a dermatoscope, a smartphone and an atlas camera photograph the scene
(orientation, re-take zoom, light, optics, framing, blur, compression)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from mmcore.synthderm.canvas import Canvas, grid, smoothstep
from mmcore.synthderm.priors import Lesion


def apply_view(c: Canvas, lesion: Lesion, rng: np.random.Generator, repeat: bool) -> tuple[Image.Image, np.ndarray]:
    """Turn the scene into one photograph: orientation (and re-take zoom), light, optics, framing, compression."""
    size = c.S
    img = c.img
    mask = np.zeros((size, size), dtype=bool)
    mask[c.y0 : c.y1, c.x0 : c.x1] = c.inside
    k = int(rng.integers(4))
    img, mask = np.rot90(img, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if repeat:  # another photograph of the same lesion: closer in, shifted
        side = int(size / rng.uniform(1.05, 1.35))
        ys, xs = np.nonzero(mask)
        cy, cx = (ys.mean(), xs.mean()) if len(ys) else (size / 2, size / 2)
        top = int(np.clip(cy - side / 2 + rng.uniform(-0.1, 0.1) * side, 0, size - side))
        left = int(np.clip(cx - side / 2 + rng.uniform(-0.1, 0.1) * side, 0, size - side))
        crop = Image.fromarray(_to_uint8(img[top : top + side, left : left + side]))
        img = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        mask_img = Image.fromarray(mask[top : top + side, left : left + side].astype(np.uint8) * 255)
        mask = np.asarray(mask_img.resize((size, size), Image.NEAREST)) > 127
    img = np.array(img, dtype=np.float32)  # a writable copy
    ys, xs = grid(size)
    xn, yn = xs / (size / 2) - 1, ys / (size / 2) - 1
    visible = np.ones((size, size), dtype=bool)
    if lesion.domain == "dermoscopy":
        out, visible = _dermoscope(img, rng, xn, yn)
    elif lesion.domain == "clinical":
        out, visible = _smartphone(img, rng, xn, yn)
    else:
        out, visible = _atlas(img, rng, xn, yn)
    return out, np.ascontiguousarray(mask & visible)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    out = img * np.float32(255) + np.float32(0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as decoded:
        return decoded.convert("RGB")


def _dermoscope(img: np.ndarray, rng: np.random.Generator, xn: np.ndarray, yn: np.ndarray):
    """Contact dermoscopy: even polarised light, slight fall-off, often the round field of the lens, gel bubbles."""
    rr = np.hypot(xn, yn)
    light = 1 - rng.uniform(0.03, 0.12) * rr**2
    visible = np.ones(rr.shape, dtype=bool)
    if rng.random() < 0.1:  # air bubbles in the immersion gel
        for _ in range(int(rng.integers(1, 4))):
            bx, by, br = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.04, 0.12)
            dist = np.hypot(xn - bx, yn - by) / br
            ring = smoothstep(0.75, 0.95, dist) * smoothstep(1.1, 0.95, dist)
            img += (ring * 0.5 + (dist < 1) * 0.06)[..., None] * (1 - img)
    floor = np.float32(0.0)
    if rng.random() < 0.65:  # the lens's round field: black outside
        radius = rng.uniform(0.95, 1.35)
        edge = smoothstep(radius, radius - 0.04, rr)
        light *= edge
        floor = (1 - edge) * np.float32(rng.uniform(0.0, 0.05))
        visible = rr < radius - 0.02
    light = light[..., None]
    img *= light
    img += floor if np.ndim(floor) == 0 else floor[..., None]
    img += rng.standard_normal((*img.shape[:2], 1), dtype=np.float32) * np.float32(0.006)
    return Image.fromarray(_to_uint8(img)), visible


def _smartphone(img: np.ndarray, rng: np.random.Generator, xn: np.ndarray, yn: np.ndarray):
    """A phone photo at arm's length: uneven light with a glare spot, colour cast, background, blur, JPEG."""
    a = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0.12, 0.35) * (xn * math.cos(a) + yn * math.sin(a)) - 0.12 * (xn**2 + yn**2)
    img *= (light * rng.uniform(0.85, 1.12))[..., None]
    gx, gy = rng.uniform(-0.7, 0.7, 2)
    glare = np.exp(-((xn - gx) ** 2 + (yn - gy) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2)) * rng.uniform(0.05, 0.3)
    img += glare[..., None] * (1 - img)
    cast = np.array((1.06, 1.0, 0.9) if rng.random() < 0.5 else (0.93, 1.0, 1.07), dtype=np.float32)
    img *= cast * rng.normal(1, 0.03, 3).astype(np.float32)
    visible = np.ones(xn.shape, dtype=bool)
    if rng.random() < 0.3:  # the edge of the body and what lies behind it
        b = rng.uniform(0, 2 * math.pi)
        along = xn * math.cos(b) + yn * math.sin(b)
        across = -xn * math.sin(b) + yn * math.cos(b)
        bg = along > rng.uniform(0.75, 0.95) + 0.15 * across**2
        colour = rng.uniform(0.05, 0.6) * rng.uniform(0.7, 1.0, 3)
        img[bg] = colour.astype(np.float32)
        visible = ~bg
    image = Image.fromarray(_to_uint8(img)).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.4)))
    arr = np.asarray(image, dtype=np.float32) + rng.normal(0, 4.0, (xn.shape[0], xn.shape[1], 1))
    return _jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), int(rng.integers(25, 70))), visible


def _atlas(img: np.ndarray, rng: np.random.Generator, xn: np.ndarray, yn: np.ndarray):
    """An atlas photograph: flash, slide-film contrast and saturation, a frame or a ruler, moderate JPEG."""
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * rng.uniform(1.1, 1.35) + mean
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(1.0, 1.25)
    img *= np.array((1.04, 0.97, 1.02) if rng.random() < 0.5 else (1.04, 1.0, 0.95), dtype=np.float32)
    visible = np.ones(xn.shape, dtype=bool)
    size = xn.shape[0]
    if rng.random() < 0.5:  # a mount or border around the slide
        m = int(size * rng.uniform(0.03, 0.07))
        value = 0.95 if rng.random() < 0.5 else 0.05
        for sl in (np.s_[:m], np.s_[-m:], np.s_[:, :m], np.s_[:, -m:]):
            img[sl] = value
            visible[sl] = False
    if rng.random() < 0.4:  # a ruler along the bottom edge
        h = int(size * rng.uniform(0.06, 0.09))
        img[-h:] = 0.92
        img[-h:, :: max(2, size // 40)] = 0.1
        img[-h // 2 :, :: max(4, size // 8)] = 0.1
        visible[-h:] = False
    image = Image.fromarray(_to_uint8(img)).filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    return _jpeg(image, int(rng.integers(55, 90))), visible
