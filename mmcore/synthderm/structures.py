"""SynthDerm's structures: one painter per dermoscopic structure or feature (network, dots and globules, streaks,
vessels, veil, regression, ...); each draws into the Canvas and records what it drew."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import ImageDraw

from mmcore.synthderm.canvas import Canvas, smoothstep


def colour_offset(rng: np.random.Generator, asymmetry: int) -> tuple[float, float]:
    """Where an asymmetric lesion's darkest part sits: centred (0), along the long axis (1), anywhere (2)."""
    if asymmetry == 0:
        return 0.0, 0.0
    if asymmetry == 1:
        return float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.35)), 0.0
    angle = rng.uniform(0, 2 * math.pi)
    r = rng.uniform(0.25, 0.5)
    return r * math.cos(angle), r * math.sin(angle)


def body(c: Canvas, inner: str, outer: str, offset=(0.0, 0.0), opacity: float = 0.85, *marks: str) -> None:
    """The lesion's base colour: `inner` around `offset` blending into `outer` at the rim."""
    a = c.alpha * opacity
    if inner == outer:
        c.paint(a, inner, *marks, dominant=0.3)  # a translucent ground colour still colours the lesion
        return
    t = smoothstep(0.2, 0.95, c.offset_d(offset) + 0.15 * c.noise(4))
    c.paint_field(a, [(1 - t, inner), (t, outer)])
    for mark in marks:
        c.drawn[mark] += int((a > 0.25).sum())


def blotch(
    c: Canvas,
    colour: str,
    size: float,
    offset=(0.0, 0.0),
    opacity: float = 0.9,
    *marks: str,
    soft: float = 0.12,
    lumps: float = 0.25,
) -> np.ndarray:
    """An irregular homogeneous area of about `size` radii around `offset`; returns its alpha (h, w)."""
    field_ = size - c.offset_d(offset) + lumps * c.noise(5)
    a = smoothstep(-soft, soft, field_) * c.alpha * opacity
    c.paint(a, colour, *marks, dominant=0.3)
    return a


def network(
    c: Canvas,
    colour: str,
    regular: bool,
    strength: float,
    region: np.ndarray | None = None,
    cell_mm: float | None = None,
) -> None:
    """Pigment network: a honeycomb of lines (three cosines at 60 degrees); irregular = warped, thick, broken."""
    rng = c.rng
    cell_mm = cell_mm or rng.uniform(0.24, 0.34)
    if c.lesion.domain == "dermoscopy":  # the dermatoscope resolves the network: keep its holes 4+ pixels wide
        cell_mm = max(cell_mm, 4.5 / c.px_mm)
    period = cell_mm * c.px_mm
    k = 2 * math.pi / period
    cells = max(3.0, 2 * c.R0 / period)
    warp = (0.3 if regular else 0.6) * period
    x = c.u + warp * c.noise(cells / 1.5)
    y = c.v + warp * c.noise(cells / 1.5)
    h = np.cos(k * x) + np.cos(k * (0.5 * x + 0.866 * y)) + np.cos(k * (-0.5 * x + 0.866 * y))  # in [-1.5, 3]
    # Saddles between the minima sit at h = -1: just above it the region h < t is a net of thin lines.
    thick = -0.55 if regular else -0.45 + 0.7 * c.noise(cells / 3)  # higher: thicker lines, smaller holes
    lines = smoothstep(thick + 0.45, thick - 0.25, h)
    if not regular:  # broken, patchy segments
        lines *= smoothstep(-0.35, 0.05, c.noise(cells / 3))
    det = c.detail(cell_mm / 3)
    pattern = det * lines + (1 - det) * 0.35
    region = c.alpha if region is None else region
    a = pattern * region * strength
    c.paint(a, colour, "pigment network")
    c.network = "regular" if regular else "irregular"


def _spots(
    c: Canvas,
    pts: np.ndarray,
    radius_px: np.ndarray,
    colour: str,
    opacity: float,
    blur: float,
    *marks: str,
    inside: bool = True,
) -> np.ndarray:
    layer, draw = c.layer()
    for (x, y), r in zip(pts.tolist(), radius_px.tolist(), strict=True):
        r = max(r, 0.8)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    a = c.alpha_of(layer, blur) * opacity
    if inside:
        a *= c.alpha > 0.2
    c.paint(a, colour, *marks)
    return a


def dots(
    c: Canvas,
    n: int,
    colour: str,
    size_mm: float,
    regular: bool,
    mark: str,
    offset=(0.0, 0.0),
    dmin: float = 0.0,
    dmax: float = 0.85,
    opacity: float = 0.9,
) -> None:
    """Dots (size ~0.1 mm) or globules (~0.2-0.4 mm): regular = even spread, one size; irregular = clustered."""
    rng = c.rng
    if regular:
        pts = c.points(n, dmin, dmax)
        radius = np.full(n, size_mm / 2 * c.px_mm) * rng.uniform(0.85, 1.15, n)
    else:
        pts = c.points(n, dmin, dmax * 0.8, offset=offset, spread=rng.uniform(0.6, 1.0))
        radius = size_mm / 2 * c.px_mm * rng.uniform(0.5, 1.7, n)
    _spots(c, pts, radius, colour, opacity, 0.5, mark)


def ring_globules(c: Canvas, colour: str, size_mm: float) -> None:
    """A rim of globules at the periphery (a growing nevus)."""
    rng = c.rng
    n = max(8, int(2 * math.pi * c.R0 / (size_mm * c.px_mm * 1.6)))
    th = np.linspace(-math.pi, math.pi, n, endpoint=False) + rng.normal(0, 0.05, n)
    idx = ((th + math.pi) * (c.N_ANGLES / (2 * math.pi))).astype(int) % c.N_ANGLES
    r = c.R0 * c.radius[idx] * rng.uniform(0.82, 0.92, n)
    x, y = c.to_box(r * np.cos(th), r * np.sin(th))
    _spots(c, np.stack([x, y], 1), np.full(n, size_mm / 2 * c.px_mm), colour, 0.9, 0.5, "globules")


def streaks(c: Canvas, colour: str, sector: float, n: int) -> None:
    """Radial streaks/pseudopods at the rim, within a sector (irregular: one part of the border only)."""
    rng = c.rng
    start = rng.uniform(-math.pi, math.pi)
    th = start + np.sort(rng.uniform(0, sector, n))
    layer, draw = c.layer()
    width = max(1, round(0.12 * c.px_mm))
    for t in th.tolist():
        i = int(((t + math.pi) % (2 * math.pi)) * c.N_ANGLES / (2 * math.pi)) % c.N_ANGLES
        rim = c.R0 * c.radius[i]
        r = np.linspace(rng.uniform(0.72, 0.85), rng.uniform(1.03, 1.14), 6) * rim
        wobble = t + rng.normal(0, 0.012, 6).cumsum()
        x, y = c.to_box(r * np.cos(wobble), r * np.sin(wobble))
        draw.line(list(zip(x.tolist(), y.tolist(), strict=True)), fill=255, width=width)
        bulb = max(0.8, 0.1 * c.px_mm)
        draw.ellipse([x[-1] - bulb, y[-1] - bulb, x[-1] + bulb, y[-1] + bulb], fill=255)
    c.paint(c.alpha_of(layer, 0.5) * 0.85, colour, "streaks")


def veil(c: Canvas, offset, size: float) -> None:
    """Blue-white veil: confluent blue-grey with a white ground-glass haze."""
    offset = (0.6 * offset[0], 0.6 * offset[1])  # over the lesion's body, not its fading rim
    a = smoothstep(-0.1, 0.15, size - c.offset_d(offset) + 0.3 * c.noise(4)) * c.alpha
    c.paint(a * 0.9, "blue-grey", "blue-white veil")
    c.paint(np.clip(a * (0.22 + 0.1 * c.noise(max(4.0, c.R0 / 3))), 0, 1), "white")


def regression(c: Canvas, offset, size: float, pepper: str = "grey") -> None:
    """Regression: white scar-like depigmentation with peppering (fine blue-grey granules)."""
    a = smoothstep(-0.1, 0.15, size - c.offset_d(offset) + 0.35 * c.noise(5)) * c.alpha
    c.paint(a * 0.75, "white", "regression")
    where = np.flatnonzero(a.ravel() > 0.4)
    if where.size:
        n = min(where.size, int(c.rng.integers(15, 60)))
        pick = c.rng.choice(where, n, replace=False)
        pts = np.stack([pick % c.w, pick // c.w], 1).astype(np.float64)
        _spots(c, pts, np.full(n, max(0.6, 0.05 * c.px_mm)), pepper, 0.75, 0.3, "regression")


def _branch(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    x: float,
    y: float,
    angle: float,
    length: float,
    width: float,
    depth: int,
) -> None:
    n = 5
    pts = [(x, y)]
    for _ in range(n):
        angle += rng.normal(0, 0.18)
        x, y = x + length / n * math.cos(angle), y + length / n * math.sin(angle)
        pts.append((x, y))
    draw.line(pts, fill=255, width=max(1, round(width)))
    if depth > 0:
        for side in (-1, 1):
            if rng.random() < 0.85:
                _branch(
                    draw,
                    rng,
                    x,
                    y,
                    angle + side * rng.uniform(0.35, 0.8),
                    length * rng.uniform(0.5, 0.75),
                    width * 0.7,
                    depth - 1,
                )


def arborizing(c: Canvas, trees: int, scale: float = 1.0) -> None:
    """Arborizing vessels: sharp, bright red, branching (nodular bcc); short and fine when scale < 1."""
    layer, draw = c.layer()
    for x, y in c.points(trees, 0.0, 0.8).tolist():
        _branch(
            draw,
            c.rng,
            x,
            y,
            c.rng.uniform(0, 2 * math.pi),
            c.R0 * c.rng.uniform(0.45, 0.8) * scale,
            max(1.0, 0.2 * c.px_mm * scale),
            3 if scale >= 1 else 2,
        )
    c.paint(c.alpha_of(layer, 0.35) * (c.alpha > 0.2) * 0.95, "red", "vessels", "arborizing vessels")


def dotted_vessels(c: Canvas, spacing_mm: float, region: np.ndarray | None = None) -> None:
    """Dotted vessels: fine red dots, fairly evenly spread (jittered grid), within `region` when given."""
    rng = c.rng
    step = spacing_mm * c.px_mm
    ys, xs = np.mgrid[step / 2 : c.h : step, step / 2 : c.w : step]
    pts = np.stack([xs.ravel(), ys.ravel()], 1) + rng.normal(0, step * 0.25, (xs.size, 2))
    iy, ix = np.clip(pts[:, 1].astype(int), 0, c.h - 1), np.clip(pts[:, 0].astype(int), 0, c.w - 1)
    where = c.alpha if region is None else region * c.alpha
    pts = pts[(where[iy, ix] > 0.35) & (rng.random(len(pts)) < 0.8)]
    radius = np.full(len(pts), max(0.55, 0.04 * c.px_mm)) * rng.uniform(0.8, 1.2, len(pts))
    _spots(c, pts, radius, "red", 0.8, 0.35, "vessels", "dotted vessels")


def glomerular(c: Canvas, clusters: int) -> None:
    """Glomerular (coiled) vessels in clusters (Bowen's disease)."""
    rng = c.rng
    centres = c.points(clusters, 0.0, 0.85)
    pts = np.concatenate([ctr + rng.normal(0, 0.12 * c.px_mm, (int(rng.integers(3, 7)), 2)) for ctr in centres])
    radius = np.full(len(pts), max(0.6, 0.07 * c.px_mm)) * rng.uniform(0.8, 1.3, len(pts))
    _spots(c, pts, radius, "dark red", 0.9, 0.3, "vessels", "glomerular vessels")


def comma_vessels(c: Canvas, n: int) -> None:
    """Comma vessels: short, slightly curved red lines (dermal nevus)."""
    layer, draw = c.layer()
    for x, y in c.points(n, 0.0, 0.8).tolist():
        a = c.rng.uniform(0, 2 * math.pi)
        length = c.rng.uniform(0.3, 0.6) * c.px_mm
        t = np.linspace(0, 1, 4)
        px = x + t * length * math.cos(a) + (t**2) * length * 0.5 * math.cos(a + 1.6)
        py = y + t * length * math.sin(a) + (t**2) * length * 0.5 * math.sin(a + 1.6)
        draw.line(list(zip(px.tolist(), py.tolist(), strict=True)), fill=255, width=1)
    c.paint(c.alpha_of(layer, 0.3) * 0.8 * (c.alpha > 0.2), "red", "vessels", "comma vessels")


def ovoid_nests(c: Canvas, n: int, size_mm: float, colour: str = "blue-grey") -> None:
    """Blue-grey ovoid nests: large soft ovals, not connected to each other (pigmented bcc)."""
    rng = c.rng
    layer, draw = c.layer()
    t = np.linspace(0, 2 * math.pi, 20, endpoint=False)
    for x, y in c.points(n, 0.0, 0.85).tolist():
        a, b = size_mm / 2 * c.px_mm * rng.uniform(0.7, 1.4), size_mm / 2 * c.px_mm * rng.uniform(0.4, 0.8)
        phi = rng.uniform(0, math.pi)
        ex, ey = a * np.cos(t), b * np.sin(t)
        px, py = x + ex * math.cos(phi) - ey * math.sin(phi), y + ex * math.sin(phi) + ey * math.cos(phi)
        draw.polygon(list(zip(px.tolist(), py.tolist(), strict=True)), fill=255)
    c.paint(c.alpha_of(layer, 0.9) * 0.85 * (c.alpha > 0.2), colour, "blue-grey ovoid nests")


def ulcer(c: Canvas, size: float) -> None:
    """Ulceration: a dark red, crusted defect off centre."""
    off = (c.rng.uniform(-0.35, 0.35), c.rng.uniform(-0.35, 0.35))
    a = smoothstep(-0.05, 0.1, size - c.offset_d(off) + 0.2 * c.noise(6)) * (c.alpha > 0.5)
    c.paint(a * 0.95, "dark red", "ulceration")
    c.paint(a * smoothstep(0.1, 0.6, c.noise(c.R0 / 2)) * 0.6, "red")


def milia(c: Canvas, n: int) -> None:
    """Milia-like cysts: small round yellow-white spots (seborrhoeic keratosis)."""
    pts = c.points(n, 0.0, 0.8)
    radius = c.rng.uniform(0.1, 0.22, n) * c.px_mm
    _spots(c, pts, radius, "yellow-white", 0.95, 0.6, "milia-like cysts")


def comedos(c: Canvas, n: int, colour: str) -> None:
    """Comedo-like openings: round-oval dark keratin plugs."""
    pts = c.points(n, 0.0, 0.85)
    radius = c.rng.uniform(0.15, 0.3, n) * c.px_mm
    _spots(c, pts, radius, colour, 0.85, 0.8, "comedo-like openings")


def fissures(c: Canvas, n: int) -> None:
    """Fissures and ridges: winding dark furrows beside pale ridges (the brain-like look of seborrhoeic keratosis)."""
    rng = c.rng
    layer, draw = c.layer()
    ridge_layer, ridge_draw = c.layer()
    width = max(1, round(0.2 * c.px_mm))
    for x, y in c.points(n, 0.0, 0.75).tolist():
        a = rng.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(10):
            a += rng.normal(0, 0.45)
            x, y = x + 0.1 * c.R0 * math.cos(a), y + 0.1 * c.R0 * math.sin(a)
            pts.append((x, y))
        draw.line(pts, fill=255, width=width)
        shift = width * 1.5
        ridge_draw.line([(px + shift, py + shift) for px, py in pts], fill=255, width=width + 1)
    inside = c.alpha > 0.4
    c.paint(c.alpha_of(ridge_layer, 1.0) * 0.35 * inside, "light brown")
    c.paint(c.alpha_of(layer, 1.0) * 0.7 * inside, "dark brown", "fissures")


def lacunae(c: Canvas, colours: Sequence[str], size_mm: float, weights: Sequence[float] | None = None) -> None:
    """Lacunae: closely packed round red-purple clods separated by thin whitish septa (angioma)."""
    rng = c.rng
    cand = c.points(300, 0.0, 0.95)
    radius = size_mm / 2 * c.px_mm * rng.uniform(0.45, 1.2, len(cand))
    order = np.argsort(-radius)  # big ones first, then fill the gaps
    keep: list[int] = []
    for i in order.tolist():
        if not keep or np.all(np.hypot(*(cand[keep] - cand[i]).T) > radius[keep] + radius[i] + 0.6):
            keep.append(i)
    keep_arr = np.array(keep)
    p = None if weights is None else np.array(weights) / sum(weights)
    which = rng.choice(len(colours), len(keep_arr), p=p)
    for k, colour in enumerate(colours):
        sel = keep_arr[which == k]
        if len(sel):
            _spots(c, cand[sel], radius[sel], colour, 0.92, 0.8, "lacunae")


def scale(c: Canvas, amount: float) -> None:
    """Surface scale: rough white-yellow flakes, denser towards the centre."""
    patch = smoothstep(-0.15, 0.2, 0.45 + amount - c.d + 0.5 * c.noise(4))  # opaque crusts, mostly central
    grain = 0.7 + 0.3 * np.clip(c.noise(max(10.0, c.R0 / 1.5)) * 2, -1, 1)  # rough, flaky surface
    a = patch * grain * c.alpha
    c.paint(a * 0.8, "yellow-white", "scale")


def strawberry(c: Canvas) -> None:
    """Strawberry pattern: a red pseudonetwork around white-yellow follicular openings with pale rims."""
    rng = c.rng
    c.paint(c.alpha * 0.45 * (0.7 + 0.3 * c.noise(4)), "red")
    step = rng.uniform(0.7, 1.0) * c.px_mm
    ys, xs = np.mgrid[step / 2 : c.h : step, step / 2 : c.w : step]
    pts = np.stack([xs.ravel(), ys.ravel()], 1) + rng.normal(0, step * 0.15, (xs.size, 2))
    iy, ix = np.clip(pts[:, 1].astype(int), 0, c.h - 1), np.clip(pts[:, 0].astype(int), 0, c.w - 1)
    pts = pts[c.alpha[iy, ix] > 0.4]
    radius = rng.uniform(0.12, 0.2, len(pts)) * c.px_mm
    _spots(c, pts, radius * 1.7, "pink", 0.5, 1.0)
    _spots(c, pts, radius, "yellow-white", 0.75, 0.6, "strawberry pattern")


def white_patch(c: Canvas, size: float) -> None:
    """Central white scar-like patch (dermatofibroma)."""
    off = (c.rng.uniform(-0.1, 0.1), c.rng.uniform(-0.1, 0.1))
    a = smoothstep(-0.08, 0.08, size - c.offset_d(off) + 0.12 * c.noise(5)) * c.alpha
    c.paint(a * (0.55 + 0.15 * c.noise(6)), "white", "central white patch")
