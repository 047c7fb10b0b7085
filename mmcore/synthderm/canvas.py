"""SynthDerm's canvas: the skin (colour by Fitzpatrick type, furrows, redness, hair) and the lesion's geometry in a
box around it, in which every painter draws and records the colours and findings it drew."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmcore.synthderm.priors import Lesion

# Drawing colours -> (sRGB, the vocabulary colour a dermatologist would call it).
_PALETTE: dict[str, tuple[tuple[float, float, float], str]] = {
    "white": ((0.94, 0.92, 0.90), "white"),
    "yellow-white": ((0.96, 0.93, 0.78), "white"),
    "red": ((0.80, 0.22, 0.24), "red"),
    "pink": ((0.93, 0.58, 0.58), "red"),
    "dark red": ((0.48, 0.07, 0.10), "red"),
    "purple": ((0.50, 0.20, 0.36), "red"),
    "light brown": ((0.72, 0.50, 0.32), "light brown"),
    "dark brown": ((0.40, 0.22, 0.12), "dark brown"),
    "blue-grey": ((0.40, 0.46, 0.56), "blue-grey"),
    "grey": ((0.44, 0.46, 0.54), "blue-grey"),
    "black": ((0.09, 0.07, 0.07), "black"),
}
# How much each drawing colour darkens with the skin (pigment on dark skin looks darker), as an exponent.
_SKIN_ADAPT = {"white": 0.15, "red": 0.8, "light brown": 1.0, "dark brown": 1.0, "blue-grey": 0.8, "black": 1.0}
_SKIN = {
    1: (0.96, 0.83, 0.77),
    2: (0.92, 0.75, 0.65),
    3: (0.83, 0.63, 0.50),
    4: (0.68, 0.48, 0.35),
    5: (0.47, 0.32, 0.23),
    6: (0.29, 0.20, 0.15),
}
_SKIN_REF = np.array(_SKIN[2], dtype=np.float32)


def smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 below edge0, 1 beyond edge1 (either way round), a smooth cubic between: soft edges and fades everywhere."""
    t = (x - edge0) / (edge1 - edge0)
    np.minimum(t, 1.0, out=t)  # in place: np.clip's wrapper costs more than the work at this size
    np.maximum(t, 0.0, out=t)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (S, S) float32, read-only and shared."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise (h, w), std about 0.5: a small random grid upsampled bicubically (fast, in C)."""
    gh, gw = max(2, round(cells * h / max(h, w))) + 2, max(2, round(cells * w / max(h, w))) + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))


def _periodic(rng: np.random.Generator, n: int, harmonics: Sequence[int], amplitude: float) -> np.ndarray:
    """A random smooth function of the angle, sampled at n points: sum of cosines with random phases."""
    th = np.linspace(-math.pi, math.pi, n, endpoint=False)
    out = np.zeros(n)
    for k in harmonics:
        out += amplitude * rng.uniform(0.3, 1.0) / math.sqrt(k) * np.cos(k * th + rng.uniform(0, 2 * math.pi))
    return out


class Canvas:
    """The scene (S, S, 3) float32 in [0, 1] and the lesion geometry inside a box around it.

    In the box: u, v are pixel offsets in the lesion's own frame (u along its long axis), theta the angle, d the
    distance normalised by the radius at that angle (1 on the border), alpha the soft lesion coverage.
    """

    N_ANGLES = 256

    def __init__(self, lesion: Lesion, size: int, rng: np.random.Generator) -> None:
        self.S, self.rng, self.lesion = size, rng, lesion
        self.px_mm = size / lesion.fov_mm
        self.skin = (np.array(_SKIN[lesion.fitzpatrick]) * rng.uniform(0.96, 1.04, 3)).astype(np.float32)
        self.img = _skin(rng, size, self.skin, self.px_mm, lesion)
        self.drawn: Counter = Counter()
        self.coverage: Counter = Counter()
        self.network = ""  # regular | irregular, once a network is drawn

        self.R0 = lesion.diameter_mm / 2 * self.px_mm
        self.radius = _radius_table(rng, lesion, self.N_ANGLES)
        self.width = _border_table(rng, lesion.border, self.N_ANGLES)
        cx, cy = lesion.centre[0] * size, lesion.centre[1] * size
        self.cx, self.cy = cx, cy
        half = int(math.ceil(self.R0 * self.radius.max() * 1.45)) + 3
        self.x0, self.x1 = max(0, int(cx) - half), min(size, int(cx) + half + 1)
        self.y0, self.y1 = max(0, int(cy) - half), min(size, int(cy) + half + 1)
        self.h, self.w = self.y1 - self.y0, self.x1 - self.x0
        ys, xs = np.mgrid[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        self.cos, self.sin = math.cos(lesion.orientation), math.sin(lesion.orientation)
        dx, dy = xs - cx, ys - cy
        self.u, self.v = self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy  # (h, w) lesion frame
        self.theta = np.arctan2(self.v, self.u)
        idx = ((self.theta + math.pi) * (self.N_ANGLES / (2 * math.pi))).astype(np.int32) % self.N_ANGLES
        self.rpix = self.R0 * self.radius[idx]
        self.d = np.hypot(self.u, self.v) / self.rpix
        w = self.width[idx]
        ragged = self.noise(max(5.0, self.R0 / 6)) * (0.04 + 0.2 * w)
        self.d_edge = self.d + ragged  # the border, with its own wiggle and fuzz
        self.alpha = smoothstep(1 + w / 2, 1 - w / 2, self.d_edge)  # (h, w)
        self.inside = self.d_edge < 1.0
        self.area = max(1, int(self.inside.sum()))

    @property
    def box(self) -> np.ndarray:
        """The lesion's box of the scene (h, w, 3): a view, so painting into it paints the scene."""
        return self.img[self.y0 : self.y1, self.x0 : self.x1]

    def noise(self, cells: float) -> np.ndarray:
        """Smooth noise over the box (h, w), about `cells` cells across its longer side."""
        return _noise(self.rng, self.h, self.w, cells)

    def colour(self, name: str) -> np.ndarray:
        """A drawing colour's RGB on this skin: darker on darker skin, with a little jitter."""
        rgb, vocab = _PALETTE[name]
        ratio = self.skin / _SKIN_REF
        if vocab in ("white", "blue-grey", "black"):  # not pigment hues: darken with the skin, keep the hue
            ratio = np.full(3, ratio.mean(), dtype=np.float32)
        adapt = ratio ** _SKIN_ADAPT[vocab]
        jitter = self.rng.uniform(0.94, 1.06)
        return np.clip(np.array(rgb, dtype=np.float32) * adapt * jitter, 0, 1)

    def paint(self, alpha: np.ndarray, colour: str, *marks: str, dominant: float = 0.6) -> None:
        """Composite `colour` over the box with per-pixel `alpha` (h, w); count the colour where alpha reaches
        `dominant` (lower for a translucent ground colour than for a structure), and the findings drawn."""
        rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
        if rows.size == 0:
            return
        sub = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # only where it paints: dots, lines are small
        a = alpha[sub].astype(np.float32, copy=False)
        box = self.box[sub]
        box += a[..., None] * (self.colour(colour) - box)
        self.coverage[_PALETTE[colour][1]] += int(((a >= dominant) & self.inside[sub]).sum())
        if marks:
            n = int((a > 0.25).sum())
            for mark in marks:
                self.drawn[mark] += n

    def paint_field(self, alpha: np.ndarray, weights: Sequence[tuple[np.ndarray, str]]) -> None:
        """Composite a spatial mix of colours: weights are (w (h, w), colour) summing to 1 per pixel."""
        field_rgb = sum(w[..., None] * self.colour(c) for w, c in weights)
        box = self.box
        box += alpha[..., None] * (field_rgb - box)
        for w, c in weights:
            self.coverage[_PALETTE[c][1]] += int(((alpha * w >= 0.3) & self.inside).sum())

    def layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        """A blank greyscale layer the size of the box, and its drawing context (PIL draws lines and shapes in C)."""
        img = Image.new("L", (self.w, self.h), 0)
        return img, ImageDraw.Draw(img)

    @staticmethod
    def alpha_of(layer: Image.Image, blur: float = 0.0) -> np.ndarray:
        """A drawn layer as alpha (h, w) in [0, 1], softened by a Gaussian blur of `blur` pixels."""
        if blur > 0:
            layer = layer.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(layer, dtype=np.float32) / 255.0

    def points(
        self,
        n: int,
        dmin: float = 0.0,
        dmax: float = 0.85,
        offset: tuple[float, float] = (0.0, 0.0),
        spread: float = 1.0,
    ) -> np.ndarray:
        """n random points (n, 2) as box (x, y) inside the lesion, between relative radii dmin and dmax."""
        th = self.rng.uniform(-math.pi, math.pi, n)
        rad = np.sqrt(self.rng.uniform(dmin**2, dmax**2, n)) * spread
        idx = ((th + math.pi) * (self.N_ANGLES / (2 * math.pi))).astype(int) % self.N_ANGLES
        r = rad * self.R0 * self.radius[idx]
        u = r * np.cos(th) + offset[0] * self.R0
        v = r * np.sin(th) + offset[1] * self.R0
        return np.stack(self.to_box(u, v), axis=1)

    def to_box(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box pixel (x, y) of points given in the lesion's own frame (u along its long axis)."""
        x = self.cx + self.cos * u - self.sin * v - self.x0
        y = self.cy + self.sin * u + self.cos * v - self.y0
        return x, y

    def offset_d(self, offset: tuple[float, float]) -> np.ndarray:
        """Distance from an off-centre point, in lesion radii: eccentric colour for asymmetric lesions."""
        return np.hypot(self.u - offset[0] * self.R0, self.v - offset[1] * self.R0) / self.rpix

    def detail(self, size_mm: float) -> float:
        """1 when a structure of this size spans 3+ pixels, falling to 0 below a pixel (clinical views)."""
        return float(np.clip((size_mm * self.px_mm - 1.0) / 2.0, 0.0, 1.0))


def _radius_table(rng: np.random.Generator, lesion: Lesion, n: int) -> np.ndarray:
    """Radius (relative) at n angles: even harmonics keep both axes of symmetry, odd ones break one, phases both."""
    th = np.linspace(-math.pi, math.pi, n, endpoint=False)
    r = 1.0 + rng.uniform(0.0, 0.18) * np.cos(2 * th)  # an ellipse is symmetric in both axes
    if lesion.asymmetry == 1:  # mirror-symmetric about the long axis only (cos terms with zero phase)
        r += rng.uniform(0.10, 0.2) * np.cos(th) * rng.choice([-1, 1]) + rng.uniform(0.03, 0.09) * np.cos(3 * th)
    elif lesion.asymmetry == 2:
        r += _periodic(rng, n, (1, 2, 3), rng.uniform(0.22, 0.34))
    irregular = {"mel": 0.10, "bcc": 0.07, "akiec": 0.07, "bkl": 0.05}.get(lesion.dx, 0.025)
    if lesion.variant in ("atypical", "in_situ", "lplk"):
        irregular = 0.07
    if lesion.asymmetry == 0:  # fine wiggle that keeps both mirror axes
        r += irregular * 0.5 * np.cos(4 * th) * rng.uniform(-1, 1) + irregular * 0.3 * np.cos(6 * th)
    else:
        r += _periodic(rng, n, range(4, 12), irregular)
    return np.clip(r, 0.45, 1.8)


def _border_table(rng: np.random.Generator, border: str, n: int) -> np.ndarray:
    """Width of the border's fade (in radii) at n angles: sharp, indistinct, or part of each."""
    if border == "sharp":
        return np.full(n, rng.uniform(0.04, 0.08))
    if border == "indistinct":
        return np.clip(rng.uniform(0.4, 0.6) + _periodic(rng, n, (1, 2, 3), 0.08), 0.3, 0.8)
    mix = _periodic(rng, n, (1, 2), 1.0)
    return 0.05 + 0.5 * smoothstep(-0.25, 0.25, mix - np.median(mix))


# ---- skin and hair ----


def _skin(rng: np.random.Generator, size: int, skin: np.ndarray, px_mm: float, lesion: Lesion) -> np.ndarray:
    """Skin of one colour with faint mottling, sun-damage redness, furrows and grain: (S, S, 3) float32."""
    shade = 1.0 + 0.035 * _noise(rng, size, size, 3) + 0.015 * _noise(rng, size, size, size / (1.5 * px_mm) + 2)
    ys, xs = grid(size)
    period = rng.uniform(0.7, 1.3) * px_mm  # skin furrows: two crossing sets, fading in and out
    warp = _noise(rng, size, size, 5) * 3.0
    depth = 0.04 * min(1.0, period / 5)
    for j, angle in enumerate(rng.uniform(0, math.pi, 2)):
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period) + warp
        patchy = smoothstep(-0.3, 0.4, _noise(rng, size, size, 4))
        shade -= depth * (1.0 - 0.4 * j) * patchy * smoothstep(0.8, 1.0, np.cos(phase))
    img = shade[..., None] * skin
    if lesion.age >= 50 or rng.random() < 0.25:  # erythema and sun damage: faint patchy redness
        red = smoothstep(-0.2, 0.8, _noise(rng, size, size, 3)) * rng.uniform(0.02, 0.06)
        img[..., 1] *= 1 - red
        img[..., 2] *= 1 - 0.8 * red
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(0.01)
    return np.clip(img, 0, 1, out=img.astype(np.float32, copy=False))


_HAIR_PER_IMAGE = {
    "scalp": 14,
    "face": 5,
    "ear": 2,
    "nose": 1,
    "neck": 4,
    "chest": 5,
    "abdomen": 4,
    "back": 4,
    "buttocks": 2,
    "arm": 7,
    "forearm": 9,
    "hand": 4,
    "thigh": 6,
    "leg": 9,
    "foot": 3,
    "sole": 0,
}


def hair(c: Canvas, rng: np.random.Generator) -> None:
    """Curved hairs across the scene (over the lesion), more on scalp, limbs and men; drawn at 2x for smoothness."""
    lesion = c.lesion
    mean = _HAIR_PER_IMAGE.get(lesion.site_detail, 3) * (1.0 if lesion.sex == "male" else 0.45)
    mean *= {"dermoscopy": 1.0, "clinical": 1.4, "atlas": 0.8}[lesion.domain]
    n = int(min(40, rng.poisson(mean)))
    if n == 0:
        return
    s2 = 2 * c.S
    layer = Image.new("L", (s2, s2), 0)
    draw = ImageDraw.Draw(layer)
    flow = rng.uniform(0, math.pi)  # hairs on one patch of skin lie roughly the same way
    width = max(1, round(0.08 * c.px_mm * 2))
    for _ in range(n):
        angle = flow + rng.normal(0, 0.35)
        length = rng.uniform(0.3, 1.1) * s2
        x0, y0 = rng.uniform(-0.2, 1.2, 2) * s2
        bend = rng.normal(0, 0.15) * length
        t = np.linspace(0, 1, 12)
        px = x0 + t * length * math.cos(angle) - 4 * t * (1 - t) * bend * math.sin(angle)
        py = y0 + t * length * math.sin(angle) + 4 * t * (1 - t) * bend * math.cos(angle)
        draw.line(list(zip(px.tolist(), py.tolist(), strict=True)), fill=255, width=width)
    alpha = np.asarray(layer.resize((c.S, c.S), Image.BILINEAR), dtype=np.float32) / 255.0 * 0.8
    if lesion.fitzpatrick == 1 and rng.random() < 0.4:
        colour = np.array((0.55, 0.42, 0.28), dtype=np.float32)  # fair hair
    elif lesion.age >= 70 and rng.random() < 0.5:
        colour = np.array((0.55, 0.53, 0.52), dtype=np.float32)
    else:
        colour = np.array((0.10, 0.07, 0.05), dtype=np.float32)
    c.img += alpha[..., None] * (colour - c.img)
