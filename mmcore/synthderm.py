"""SynthDerm, the procedural dermoscopy dataset: seven HAM10000 classes drawn with their own shape, border, colours
and structures on Fitzpatrick 1-6 skin, in three acquisition domains, with the lesion mask and the findings drawn.

Each class is a mix of variants (what a dermatologist sees in practice), and the variants overlap on purpose, so a
model cannot reach 100%:
- nv: reticular (regular brown network fading at the rim), globular, homogeneous, dermal (pink-tan with comma
  vessels: looks like a featureless df or bcc), blue (homogeneous blue-grey: shares colour and veil-like look with
  nodular mel), and atypical (asymmetric, 3 colours, irregular network and dots: drawn like mel in situ).
- mel: classic (asymmetric, 3+ colours with blue-grey/black, irregular network, dots/globules, streaks, veil,
  regression, blotch), in situ (small, 2-3 browns, one-axis asymmetry: like atypical nv), featureless (pink-red,
  structureless, dotted vessels: like bcc, akiec and dermal nv) and nodular (blue-black, veil: like blue nv and
  thrombosed vasc).
- bkl: seborrhoeic keratosis (browns, sharp border, milia-like cysts, comedo-like openings, fissures), solar lentigo
  (homogeneous light brown, faint network: like nv) and lichen-planus-like keratosis (grey peppering and white
  areas: the regression of mel).
- bcc: nodular (pink, arborizing vessels, ulceration), pigmented (blue-grey ovoid nests, dark brown: mel colours),
  superficial (pink patch, fine vessels, erosions: like akiec).
- akiec: actinic keratosis (red strawberry pattern, white scale, fine vessels), Bowen's (glomerular vessels, scale)
  and pigmented AK (browns and grey dots: like solar lentigo and lentigo maligna).
- df: pink/light brown, central white patch, faint peripheral network; about one in five has no white patch (nv-like).
- vasc: angioma (red lacunae, whitish septa) and thrombosed (dark red/black lacunae, blue-whitish veil: like mel).
Findings are what was drawn into the scene, so in clinical and atlas views small structures may be blurred beyond
recognition, as in real photographs. Same (seed, index) gives byte-identical output; index i alone is enough.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmcore.cases import DOMAINS, DX_CLASSES, DX_TYPES, Case, CaseStore, normalise_site
from mmcore.config import Config
from mmcore.fidelity import COLOURS, FEATURES, STRUCTURES

SOURCE = "synthderm"
# HAM10000 class frequencies (Tschandl et al. 2018, 10,015 images).
HAM_PREVALENCE = {
    "nv": 0.6695,
    "mel": 0.1111,
    "bkl": 0.1097,
    "bcc": 0.0513,
    "akiec": 0.0327,
    "vasc": 0.0142,
    "df": 0.0115,
}
REPEAT_RATE = 0.2  # chance that an image is another view of the previous image's lesion (HAM: ~1.3 images/lesion)

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

# ---- metadata tables, after HAM10000's (ages in 5-year steps) ----
_AGE = {
    "akiec": (67, 11),
    "bcc": (66, 12),
    "bkl": (63, 13),
    "df": (51, 14),
    "mel": (60, 15),
    "nv": (45, 16),
    "vasc": (50, 20),
}
_MALE = {"akiec": 0.68, "bcc": 0.62, "bkl": 0.57, "df": 0.47, "mel": 0.60, "nv": 0.51, "vasc": 0.45}
# Detailed site words (all in mmcore.cases.SITE_MAP) and their weights per class.
_SITES = {
    "akiec": {"face": 45, "scalp": 8, "ear": 5, "hand": 12, "forearm": 12, "chest": 6, "back": 5, "leg": 5, "neck": 2},
    "bcc": {
        "back": 24,
        "face": 22,
        "chest": 10,
        "leg": 9,
        "arm": 8,
        "abdomen": 6,
        "neck": 7,
        "scalp": 5,
        "ear": 3,
        "nose": 6,
    },
    "bkl": {"face": 22, "back": 22, "chest": 13, "leg": 11, "arm": 9, "abdomen": 9, "neck": 5, "scalp": 4, "hand": 5},
    "df": {"leg": 45, "thigh": 20, "arm": 14, "back": 6, "chest": 5, "abdomen": 6, "foot": 4},
    "mel": {
        "back": 27,
        "leg": 14,
        "thigh": 6,
        "arm": 10,
        "forearm": 5,
        "face": 11,
        "chest": 12,
        "abdomen": 6,
        "neck": 3,
        "scalp": 2,
        "foot": 2,
        "sole": 2,
    },
    "nv": {
        "back": 27,
        "leg": 13,
        "thigh": 8,
        "chest": 12,
        "abdomen": 14,
        "arm": 9,
        "forearm": 4,
        "face": 4,
        "foot": 3,
        "sole": 2,
        "neck": 2,
        "buttocks": 2,
    },
    "vasc": {"leg": 18, "thigh": 6, "chest": 20, "abdomen": 16, "back": 15, "face": 10, "arm": 10, "neck": 5},
}
_DX_TYPE = {  # weights over mmcore.cases.DX_TYPES (histopathology, serial imaging, consensus, confocal, clinical)
    "akiec": (92, 0, 6, 0, 2),
    "bcc": (97, 0, 2, 0, 1),
    "bkl": (47, 0, 35, 14, 4),
    "df": (44, 0, 52, 0, 4),
    "mel": (98, 0, 1, 0, 1),
    "nv": (31, 55, 12, 0, 2),
    "vasc": (40, 0, 55, 0, 5),
}
_FITZ = {"dermoscopy": (20, 44, 24, 8, 3, 1), "clinical": (12, 28, 26, 17, 11, 6), "atlas": (2, 5, 13, 30, 28, 22)}
_DIAMETER = {
    "akiec": (8, 0.35),
    "bcc": (8, 0.4),
    "bkl": (10, 0.4),
    "df": (6, 0.3),
    "mel": (11, 0.45),
    "nv": (5.5, 0.35),
    "vasc": (5, 0.4),
}  # (median mm, log-sd)
_FOV = {"dermoscopy": (1.5, 2.6, 9, 26), "clinical": (4.0, 9.0, 25, 90), "atlas": (2.4, 5.0, 15, 60)}  # x diam, mm
# Point-of-care history per class: months since noticed (median), P(changed), P(itch), P(bleeding).
_HISTORY = {
    "akiec": (10, 0.35, 0.35, 0.12),
    "bcc": (14, 0.45, 0.12, 0.45),
    "bkl": (36, 0.25, 0.35, 0.06),
    "df": (30, 0.15, 0.3, 0.04),
    "mel": (6, 0.75, 0.2, 0.15),
    "nv": (72, 0.1, 0.06, 0.02),
    "vasc": (18, 0.2, 0.05, 0.28),
}
_VARIANTS = {
    "nv": {"reticular": 36, "globular": 13, "homogeneous": 13, "dermal": 9, "blue": 4, "atypical": 25},
    "mel": {"classic": 55, "in_situ": 25, "featureless": 12, "nodular": 8},
    "bkl": {"seb_k": 50, "solar_lentigo": 30, "lplk": 20},
    "bcc": {"nodular": 50, "pigmented": 30, "superficial": 20},
    "akiec": {"ak": 55, "bowen": 25, "pigmented": 20},
    "df": {"typical": 80, "no_patch": 20},
    "vasc": {"angioma": 70, "thrombosed": 30},
}


@dataclass
class SynthCase:
    """One generated case: the Case (findings, history in extra), the RGB image and the lesion mask (H, W)."""

    case: Case
    image: Image.Image
    mask: np.ndarray
    index: int
    drawn: dict[str, int] = field(default_factory=dict)  # structure or feature -> pixels drawn


def case_id_for(seed: int, index: int) -> str:
    """The stable case id of one generated case: synthderm:s{seed}:{index:06d}."""
    return f"{SOURCE}:s{seed}:{index:06d}"


def generate(
    n: int, seed: int = 0, domains: Sequence[str] = DOMAINS, balanced: bool = False, size: int = 224, start: int = 0
) -> Iterator[SynthCase]:
    """Cases start..start+n-1; each is the same as generate_one(index, ...) alone."""
    for index in range(start, start + n):
        yield generate_one(index, seed, domains, balanced, size)


def generate_one(
    index: int, seed: int = 0, domains: Sequence[str] = DOMAINS, balanced: bool = False, size: int = 224
) -> SynthCase:
    """Case `index` of the dataset `seed`: byte-identical whenever it is asked for again."""
    domains = tuple(domains)
    unknown = set(domains) - set(DOMAINS)
    if not domains or unknown:
        raise ValueError(f"domains must be a non-empty subset of {', '.join(DOMAINS)}; got {', '.join(domains)}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    root = _root_of(seed, index)
    lesion = _sample_lesion(np.random.default_rng([seed, root, 1]), domains, balanced)
    canvas = _render_scene(lesion, size, np.random.default_rng([seed, root, 2]))
    image, mask = _apply_view(canvas, lesion, np.random.default_rng([seed, index, 3]), repeat=root != index)
    findings = _findings(canvas, lesion)
    site, _ = normalise_site(lesion.site_detail)
    case = Case(
        case_id=case_id_for(seed, index),
        source=SOURCE,
        dx=lesion.dx,
        lesion_id=f"s{seed}-L{root:06d}",
        patient_id=f"s{seed}-P{root:06d}",
        age=lesion.age,
        sex=lesion.sex,
        site=site,
        site_detail=lesion.site_detail,
        fitzpatrick=lesion.fitzpatrick,
        dx_type=lesion.dx_type,
        domain=lesion.domain,
        findings=findings,
        extra={"variant": lesion.variant, "history": lesion.history, "synth_seed": seed, "synth_index": index},
    )
    drawn = {k: int(v) for k, v in sorted(canvas.drawn.items())}
    return SynthCase(case=case, image=image, mask=mask, index=index, drawn=drawn)


def cli_synth(args: argparse.Namespace, cfg: Config) -> int:
    """`synth --n N --seed S`: SynthDerm cases, masks and a note of every strategy into the case store."""
    from tqdm import tqdm

    from mmcore.cli import CliError, emit
    from mmcore.images import DecodedImage, pixel_sha256
    from mmcore.notes import strategy_names, write_note

    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    if args.n < 1:
        raise CliError(f"--n must be at least 1, got {args.n}")
    if not domains or set(domains) - set(DOMAINS):
        raise CliError(f"--domains must be a comma-separated subset of {','.join(DOMAINS)}, got {args.domains!r}")
    if not 32 <= args.size <= 2048:
        raise CliError(f"--size must be between 32 and 2048 pixels, got {args.size}")
    started = time.perf_counter()
    by_dx: Counter = Counter()
    by_domain: Counter = Counter()
    stored = 0
    strategies = strategy_names()
    with CaseStore(cfg.home) as store:
        batch: list[Case] = []
        cases = generate(args.n, args.seed, domains, args.balanced, args.size)
        for i, sc in enumerate(tqdm(cases, total=args.n, desc="synth", unit="case", file=sys.stderr)):
            sha, rel = store.put_image(DecodedImage(sc.image, "png", pixel_sha256(sc.image)))
            case = sc.case
            case.image_sha256, case.image_path, case.mask_path = sha, rel, store.put_mask(sc.mask, sha)
            case.notes = {s: write_note(s, case, seed=args.seed) for s in strategies}
            batch.append(case)
            by_dx[case.dx] += 1
            by_domain[case.domain] += 1
            if len(batch) == 200 or i == args.n - 1:
                result = store.upsert(batch)
                stored += result.inserted + result.updated + result.unchanged
                batch = []
        splits = store.resplit(SOURCE, cfg.data.split_fractions)
    seconds = round(time.perf_counter() - started, 2)
    payload = {
        "generated": args.n,
        "stored": stored,
        "by_dx": dict(sorted(by_dx.items())),
        "by_domain": dict(sorted(by_domain.items())),
        "seconds": seconds,
    }
    text = (
        f"{args.n} SynthDerm cases (seed {args.seed}) -> {stored} stored in {cfg.home} in {seconds:.1f} s\n"
        f"  by dx: {', '.join(f'{k} {v}' for k, v in payload['by_dx'].items())}\n"
        f"  by domain: {', '.join(f'{k} {v}' for k, v in payload['by_domain'].items())}\n"
        f"  source splits: {', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}"
    )
    emit(args, payload, text)
    return 0


def _root_of(seed: int, index: int) -> int:
    """The first index of this image's lesion: a lesion has at most 3 views, in consecutive indices."""
    start = index
    while start > 0 and np.random.default_rng([seed, start, 0]).random() < REPEAT_RATE:
        start -= 1
    return start + 3 * ((index - start) // 3)


# ---- the lesion: class, variant, metadata and what to draw ----


@dataclass
class _Lesion:
    dx: str
    variant: str
    domain: str
    age: float
    sex: str
    site_detail: str
    dx_type: str
    fitzpatrick: int
    history: dict
    diameter_mm: float
    asymmetry: int
    border: str
    fov_mm: float
    centre: tuple[float, float]  # fraction of the image side
    orientation: float


def _pick(rng: np.random.Generator, table: dict[str, float] | Sequence) -> str:
    keys = list(table)
    w = np.array([table[k] for k in keys] if isinstance(table, dict) else [1.0] * len(keys), dtype=float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _sample_lesion(rng: np.random.Generator, domains: tuple[str, ...], balanced: bool) -> _Lesion:
    dx = _pick(rng, dict.fromkeys(DX_CLASSES, 1.0) if balanced else HAM_PREVALENCE)
    domain = _pick(rng, domains)
    variant = _pick(rng, _VARIANTS[dx])
    mean, sd = _AGE[dx]
    if variant in ("globular", "blue"):  # globular nevi are a pattern of the young
        mean -= 18
    age = float(np.clip(5 * round(rng.normal(mean, sd) / 5), 5, 85))
    sex = "male" if rng.random() < _MALE[dx] else "female"
    site_detail = _pick(rng, _SITES[dx])
    dx_type = DX_TYPES[int(rng.choice(5, p=np.array(_DX_TYPE[dx]) / sum(_DX_TYPE[dx])))]
    fitz_w = np.array(_FITZ[domain], dtype=float)
    if dx in ("akiec", "bcc"):  # sun damage: fair skin
        fitz_w *= (2.0, 1.6, 1.0, 0.5, 0.3, 0.2)
    fitzpatrick = int(rng.choice(6, p=fitz_w / fitz_w.sum())) + 1
    months, p_change, p_itch, p_bleed = _HISTORY[dx]
    history = {
        "duration_months": int(max(1, round(months * math.exp(rng.normal(0, 0.8))))),
        "changed": bool(rng.random() < p_change),
        "itch": bool(rng.random() < p_itch),
        "bleeding": bool(rng.random() < p_bleed),
    }
    median, log_sd = _DIAMETER[dx]
    scale = {"in_situ": 0.6, "atypical": 1.4, "dermal": 1.1, "superficial": 1.3, "bowen": 1.4}.get(variant, 1.0)
    diameter = float(np.clip(median * scale * math.exp(rng.normal(0, log_sd)), 2.0, 30.0))
    asymmetry, border = _shape_plan(rng, dx, variant)
    k_lo, k_hi, fov_lo, fov_hi = _FOV[domain]
    fov = float(np.clip(diameter * rng.uniform(k_lo, k_hi), fov_lo, fov_hi))
    jitter = {"dermoscopy": 0.06, "clinical": 0.14, "atlas": 0.2}[domain]
    centre = (0.5 + rng.uniform(-jitter, jitter), 0.5 + rng.uniform(-jitter, jitter))
    return _Lesion(
        dx,
        variant,
        domain,
        age,
        sex,
        site_detail,
        dx_type,
        fitzpatrick,
        history,
        round(diameter, 1),
        asymmetry,
        border,
        fov,
        centre,
        float(rng.uniform(0, math.pi)),
    )


def _shape_plan(rng: np.random.Generator, dx: str, variant: str) -> tuple[int, str]:
    """(asymmetry 0/1/2, border) from the class and variant's own distributions."""
    table = {  # asymmetry weights 0/1/2, border weights sharp/indistinct/mixed
        "nv": ((80, 17, 3), (60, 25, 15)),
        "mel": ((5, 30, 65), (25, 20, 55)),
        "bkl": ((45, 40, 15), (75, 10, 15)),
        "bcc": ((25, 45, 30), (20, 50, 30)),
        "akiec": ((30, 45, 25), (15, 60, 25)),
        "df": ((70, 25, 5), (30, 55, 15)),
        "vasc": ((70, 25, 5), (85, 5, 10)),
    }[dx]
    override = {
        "atypical": ((10, 50, 40), (25, 30, 45)),
        "in_situ": ((15, 60, 25), (30, 30, 40)),
        "nodular": ((40, 45, 15), (70, 10, 20)),
        "lplk": ((20, 45, 35), (35, 35, 30)),
        "blue": ((65, 30, 5), (55, 25, 20)),
    }
    asym_w, border_w = override.get(variant if dx in ("nv", "mel", "bkl") else "", table)
    asymmetry = int(rng.choice(3, p=np.array(asym_w) / sum(asym_w)))
    border = ("sharp", "indistinct", "mixed")[int(rng.choice(3, p=np.array(border_w) / sum(border_w)))]
    return asymmetry, border


# ---- the canvas: skin image and the lesion's working box, in which every painter draws ----


def _smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = (x - edge0) / (edge1 - edge0)
    np.minimum(t, 1.0, out=t)  # in place: np.clip's wrapper costs more than the work at this size
    np.maximum(t, 0.0, out=t)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (S, S) float32, read-only and shared."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise (h, w), std about 0.5: a small random grid upsampled bicubically (fast, in C)."""
    gh, gw = max(2, round(cells * h / max(h, w))) + 2, max(2, round(cells * w / max(h, w))) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC))


def _periodic(rng: np.random.Generator, n: int, harmonics: Sequence[int], amplitude: float) -> np.ndarray:
    """A random smooth function of the angle, sampled at n points: sum of cosines with random phases."""
    th = np.linspace(-math.pi, math.pi, n, endpoint=False)
    out = np.zeros(n)
    for k in harmonics:
        out += amplitude * rng.uniform(0.3, 1.0) / math.sqrt(k) * np.cos(k * th + rng.uniform(0, 2 * math.pi))
    return out


class _Canvas:
    """The scene (S, S, 3) float32 in [0, 1] and the lesion geometry inside a box around it.

    In the box: u, v are pixel offsets in the lesion's own frame (u along its long axis), theta the angle, d the
    distance normalised by the radius at that angle (1 on the border), alpha the soft lesion coverage.
    """

    N_ANGLES = 256

    def __init__(self, lesion: _Lesion, size: int, rng: np.random.Generator) -> None:
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
        self.alpha = _smoothstep(1 + w / 2, 1 - w / 2, self.d_edge)  # (h, w)
        self.inside = self.d_edge < 1.0
        self.area = max(1, int(self.inside.sum()))

    @property
    def box(self) -> np.ndarray:
        return self.img[self.y0 : self.y1, self.x0 : self.x1]

    def noise(self, cells: float) -> np.ndarray:
        return _noise(self.rng, self.h, self.w, cells)

    def colour(self, name: str) -> np.ndarray:
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
        img = Image.new("L", (self.w, self.h), 0)
        return img, ImageDraw.Draw(img)

    @staticmethod
    def alpha_of(layer: Image.Image, blur: float = 0.0) -> np.ndarray:
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
        x = self.cx + self.cos * u - self.sin * v - self.x0
        y = self.cy + self.sin * u + self.cos * v - self.y0
        return x, y

    def offset_d(self, offset: tuple[float, float]) -> np.ndarray:
        """Distance from an off-centre point, in lesion radii: eccentric colour for asymmetric lesions."""
        return np.hypot(self.u - offset[0] * self.R0, self.v - offset[1] * self.R0) / self.rpix

    def detail(self, size_mm: float) -> float:
        """1 when a structure of this size spans 3+ pixels, falling to 0 below a pixel (clinical views)."""
        return float(np.clip((size_mm * self.px_mm - 1.0) / 2.0, 0.0, 1.0))


def _radius_table(rng: np.random.Generator, lesion: _Lesion, n: int) -> np.ndarray:
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
    return 0.05 + 0.5 * _smoothstep(-0.25, 0.25, mix - np.median(mix))


# ---- skin and hair ----


def _skin(rng: np.random.Generator, size: int, skin: np.ndarray, px_mm: float, lesion: _Lesion) -> np.ndarray:
    """Skin of one colour with faint mottling, sun-damage redness, furrows and grain: (S, S, 3) float32."""
    shade = 1.0 + 0.035 * _noise(rng, size, size, 3) + 0.015 * _noise(rng, size, size, size / (1.5 * px_mm) + 2)
    ys, xs = _grid(size)
    period = rng.uniform(0.7, 1.3) * px_mm  # skin furrows: two crossing sets, fading in and out
    warp = _noise(rng, size, size, 5) * 3.0
    depth = 0.04 * min(1.0, period / 5)
    for j, angle in enumerate(rng.uniform(0, math.pi, 2)):
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period) + warp
        patchy = _smoothstep(-0.3, 0.4, _noise(rng, size, size, 4))
        shade -= depth * (1.0 - 0.4 * j) * patchy * _smoothstep(0.8, 1.0, np.cos(phase))
    img = shade[..., None] * skin
    if lesion.age >= 50 or rng.random() < 0.25:  # erythema and sun damage: faint patchy redness
        red = _smoothstep(-0.2, 0.8, _noise(rng, size, size, 3)) * rng.uniform(0.02, 0.06)
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


def _hair(c: _Canvas, rng: np.random.Generator) -> None:
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


# ---- structures: each paints into the canvas and records what it drew ----


def _colour_offset(rng: np.random.Generator, asymmetry: int) -> tuple[float, float]:
    """Where an asymmetric lesion's darkest part sits: centred (0), along the long axis (1), anywhere (2)."""
    if asymmetry == 0:
        return 0.0, 0.0
    if asymmetry == 1:
        return float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.35)), 0.0
    angle = rng.uniform(0, 2 * math.pi)
    r = rng.uniform(0.25, 0.5)
    return r * math.cos(angle), r * math.sin(angle)


def _body(c: _Canvas, inner: str, outer: str, offset=(0.0, 0.0), opacity: float = 0.85, *marks: str) -> None:
    """The lesion's base colour: `inner` around `offset` blending into `outer` at the rim."""
    a = c.alpha * opacity
    if inner == outer:
        c.paint(a, inner, *marks, dominant=0.3)  # a translucent ground colour still colours the lesion
        return
    t = _smoothstep(0.2, 0.95, c.offset_d(offset) + 0.15 * c.noise(4))
    c.paint_field(a, [(1 - t, inner), (t, outer)])
    for mark in marks:
        c.drawn[mark] += int((a > 0.25).sum())


def _blotch(
    c: _Canvas,
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
    a = _smoothstep(-soft, soft, field_) * c.alpha * opacity
    c.paint(a, colour, *marks, dominant=0.3)
    return a


def _network(
    c: _Canvas,
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
    lines = _smoothstep(thick + 0.45, thick - 0.25, h)
    if not regular:  # broken, patchy segments
        lines *= _smoothstep(-0.35, 0.05, c.noise(cells / 3))
    det = c.detail(cell_mm / 3)
    pattern = det * lines + (1 - det) * 0.35
    region = c.alpha if region is None else region
    a = pattern * region * strength
    c.paint(a, colour, "pigment network")
    c.network = "regular" if regular else "irregular"


def _spots(
    c: _Canvas,
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


def _dots(
    c: _Canvas,
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


def _ring_globules(c: _Canvas, colour: str, size_mm: float) -> None:
    """A rim of globules at the periphery (a growing nevus)."""
    rng = c.rng
    n = max(8, int(2 * math.pi * c.R0 / (size_mm * c.px_mm * 1.6)))
    th = np.linspace(-math.pi, math.pi, n, endpoint=False) + rng.normal(0, 0.05, n)
    idx = ((th + math.pi) * (c.N_ANGLES / (2 * math.pi))).astype(int) % c.N_ANGLES
    r = c.R0 * c.radius[idx] * rng.uniform(0.82, 0.92, n)
    x, y = c.to_box(r * np.cos(th), r * np.sin(th))
    _spots(c, np.stack([x, y], 1), np.full(n, size_mm / 2 * c.px_mm), colour, 0.9, 0.5, "globules")


def _streaks(c: _Canvas, colour: str, sector: float, n: int) -> None:
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


def _veil(c: _Canvas, offset, size: float) -> None:
    """Blue-white veil: confluent blue-grey with a white ground-glass haze."""
    offset = (0.6 * offset[0], 0.6 * offset[1])  # over the lesion's body, not its fading rim
    a = _smoothstep(-0.1, 0.15, size - c.offset_d(offset) + 0.3 * c.noise(4)) * c.alpha
    c.paint(a * 0.9, "blue-grey", "blue-white veil")
    c.paint(np.clip(a * (0.22 + 0.1 * c.noise(max(4.0, c.R0 / 3))), 0, 1), "white")


def _regression(c: _Canvas, offset, size: float, pepper: str = "grey") -> None:
    """Regression: white scar-like depigmentation with peppering (fine blue-grey granules)."""
    a = _smoothstep(-0.1, 0.15, size - c.offset_d(offset) + 0.35 * c.noise(5)) * c.alpha
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


def _arborizing(c: _Canvas, trees: int, scale: float = 1.0) -> None:
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


def _dotted_vessels(c: _Canvas, spacing_mm: float, region: np.ndarray | None = None) -> None:
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


def _glomerular(c: _Canvas, clusters: int) -> None:
    """Glomerular (coiled) vessels in clusters (Bowen's disease)."""
    rng = c.rng
    centres = c.points(clusters, 0.0, 0.85)
    pts = np.concatenate([ctr + rng.normal(0, 0.12 * c.px_mm, (int(rng.integers(3, 7)), 2)) for ctr in centres])
    radius = np.full(len(pts), max(0.6, 0.07 * c.px_mm)) * rng.uniform(0.8, 1.3, len(pts))
    _spots(c, pts, radius, "dark red", 0.9, 0.3, "vessels", "glomerular vessels")


def _comma_vessels(c: _Canvas, n: int) -> None:
    layer, draw = c.layer()
    for x, y in c.points(n, 0.0, 0.8).tolist():
        a = c.rng.uniform(0, 2 * math.pi)
        length = c.rng.uniform(0.3, 0.6) * c.px_mm
        t = np.linspace(0, 1, 4)
        px = x + t * length * math.cos(a) + (t**2) * length * 0.5 * math.cos(a + 1.6)
        py = y + t * length * math.sin(a) + (t**2) * length * 0.5 * math.sin(a + 1.6)
        draw.line(list(zip(px.tolist(), py.tolist(), strict=True)), fill=255, width=1)
    c.paint(c.alpha_of(layer, 0.3) * 0.8 * (c.alpha > 0.2), "red", "vessels", "comma vessels")


def _ovoid_nests(c: _Canvas, n: int, size_mm: float, colour: str = "blue-grey") -> None:
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


def _ulcer(c: _Canvas, size: float) -> None:
    """Ulceration: a dark red, crusted defect off centre."""
    off = (c.rng.uniform(-0.35, 0.35), c.rng.uniform(-0.35, 0.35))
    a = _smoothstep(-0.05, 0.1, size - c.offset_d(off) + 0.2 * c.noise(6)) * (c.alpha > 0.5)
    c.paint(a * 0.95, "dark red", "ulceration")
    c.paint(a * _smoothstep(0.1, 0.6, c.noise(c.R0 / 2)) * 0.6, "red")


def _milia(c: _Canvas, n: int) -> None:
    pts = c.points(n, 0.0, 0.8)
    radius = c.rng.uniform(0.1, 0.22, n) * c.px_mm
    _spots(c, pts, radius, "yellow-white", 0.95, 0.6, "milia-like cysts")


def _comedos(c: _Canvas, n: int, colour: str) -> None:
    """Comedo-like openings: round-oval dark keratin plugs."""
    pts = c.points(n, 0.0, 0.85)
    radius = c.rng.uniform(0.15, 0.3, n) * c.px_mm
    _spots(c, pts, radius, colour, 0.85, 0.8, "comedo-like openings")


def _fissures(c: _Canvas, n: int) -> None:
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


def _lacunae(c: _Canvas, colours: Sequence[str], size_mm: float, weights: Sequence[float] | None = None) -> None:
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


def _scale(c: _Canvas, amount: float) -> None:
    """Surface scale: rough white-yellow flakes, denser towards the centre."""
    patch = _smoothstep(-0.15, 0.2, 0.45 + amount - c.d + 0.5 * c.noise(4))  # opaque crusts, mostly central
    grain = 0.7 + 0.3 * np.clip(c.noise(max(10.0, c.R0 / 1.5)) * 2, -1, 1)  # rough, flaky surface
    a = patch * grain * c.alpha
    c.paint(a * 0.8, "yellow-white", "scale")


def _strawberry(c: _Canvas) -> None:
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


def _white_patch(c: _Canvas, size: float) -> None:
    """Central white scar-like patch (dermatofibroma)."""
    off = (c.rng.uniform(-0.1, 0.1), c.rng.uniform(-0.1, 0.1))
    a = _smoothstep(-0.08, 0.08, size - c.offset_d(off) + 0.12 * c.noise(5)) * c.alpha
    c.paint(a * (0.55 + 0.15 * c.noise(6)), "white", "central white patch")


# ---- the classes: each variant as a dermatologist would describe it ----


def _extra_colours(rng: np.random.Generator, table: dict[str, float], at_least: int) -> list[str]:
    chosen = [k for k, p in table.items() if rng.random() < p]
    rest = [k for k in table if k not in chosen]
    while len(chosen) < at_least and rest:
        chosen.append(rest.pop(int(rng.integers(len(rest)))))
    return chosen


def _paint_nv(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "reticular":
        inner, outer = [("dark brown", "light brown"), ("light brown", "light brown"), ("dark brown", "dark brown")][
            int(rng.choice(3, p=(0.55, 0.3, 0.15)))
        ]
        _body(c, inner, outer, off, rng.uniform(0.75, 0.9))
        fade = _smoothstep(1.0, 0.55, c.d) * c.alpha
        _network(c, "dark brown", True, rng.uniform(0.55, 0.8), fade)
        if rng.random() < 0.3:
            _blotch(c, "dark brown", rng.uniform(0.2, 0.35), off, 0.75, "structureless areas")
        if rng.random() < 0.2:
            _dots(c, int(rng.integers(5, 15)), "dark brown", 0.1, True, "dots", dmax=0.6)
    elif v == "globular":
        _body(c, "light brown", rng.choice(["light brown", "dark brown"]), off, rng.uniform(0.5, 0.75))
        if rng.random() < 0.35:
            _ring_globules(c, "dark brown", rng.uniform(0.25, 0.35))
        else:
            n = int(np.clip(c.area / (0.6 * c.px_mm) ** 2, 10, 120))
            _dots(c, n, "dark brown", rng.uniform(0.2, 0.3), True, "globules")
    elif v == "homogeneous":
        colour = rng.choice(["light brown", "dark brown"], p=(0.6, 0.4))
        _body(c, colour, "light brown", off, rng.uniform(0.7, 0.9), "structureless areas")
    elif v == "dermal":
        _body(c, "pink", "light brown", off, rng.uniform(0.4, 0.6), "structureless areas")
        if rng.random() < 0.7:
            _comma_vessels(c, int(rng.integers(4, 14)))
        if rng.random() < 0.4:
            _dots(c, int(rng.integers(4, 10)), "light brown", 0.25, True, "globules", dmax=0.6)
    elif v == "blue":
        _body(c, "blue-grey", "blue-grey", off, rng.uniform(0.75, 0.9), "structureless areas")
        if rng.random() < 0.4:
            _blotch(c, "dark brown", 0.3, off, 0.5)
    else:  # atypical: drawn like an early melanoma
        _body(c, "light brown", "light brown", off, rng.uniform(0.6, 0.8))
        _blotch(c, "dark brown", rng.uniform(0.3, 0.5), off, 0.85, "structureless areas")
        _network(c, "dark brown", False, rng.uniform(0.6, 0.85))
        if rng.random() < 0.6:
            colour = "black" if rng.random() < 0.3 else "dark brown"
            _dots(c, int(rng.integers(6, 20)), colour, rng.uniform(0.1, 0.25), False, "dots", off)
        if rng.random() < 0.2:
            _blotch(c, "pink", 0.3, (-off[0], -off[1]), 0.4)


def _paint_mel(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    anti = (-off[0] * 1.2, -off[1] * 1.2)
    v = lesion.variant
    if v == "classic":
        extra = _extra_colours(rng, {"black": 0.7, "blue-grey": 0.65, "white": 0.35, "red": 0.25}, 1)
        _body(c, "dark brown", "light brown", off, rng.uniform(0.75, 0.9))
        if rng.random() < 0.6:
            _network(c, rng.choice(["dark brown", "black"]), False, rng.uniform(0.6, 0.9))
        if "black" in extra or rng.random() < 0.3:
            _blotch(
                c, "black" if "black" in extra else "dark brown", rng.uniform(0.2, 0.4), off, 0.9, "structureless areas"
            )
        if rng.random() < 0.6:
            colour = "black" if "black" in extra else "dark brown"
            size = rng.choice([0.1, 0.25])
            _dots(c, int(rng.integers(8, 30)), colour, size, False, "dots" if size < 0.2 else "globules", off)
        if rng.random() < 0.4:
            _streaks(c, rng.choice(["dark brown", "black"]), rng.uniform(0.6, 2.2), int(rng.integers(5, 14)))
        if "blue-grey" in extra:
            if rng.random() < 0.6:
                _veil(c, off, rng.uniform(0.25, 0.45))
            else:
                _blotch(c, "blue-grey", rng.uniform(0.2, 0.35), anti, 0.7, "structureless areas")
        if "white" in extra:
            _regression(c, anti, rng.uniform(0.25, 0.4))
        if "red" in extra:
            if rng.random() < 0.5:
                _dotted_vessels(c, rng.uniform(0.7, 1.1), _blotch(c, "pink", 0.35, anti, 0.5))
            else:
                _blotch(c, "pink", 0.35, anti, 0.6, "structureless areas")
    elif v == "in_situ":
        _body(c, "light brown", "light brown", off, rng.uniform(0.6, 0.8))
        _blotch(c, "dark brown", rng.uniform(0.25, 0.45), off, 0.8)
        _network(c, "dark brown", False, rng.uniform(0.6, 0.85))
        if rng.random() < 0.5:
            _dots(c, int(rng.integers(5, 15)), "dark brown", 0.1, False, "dots", off)
        if rng.random() < 0.3:
            _regression(c, anti, 0.3)
    elif v == "featureless":
        _body(
            c,
            "pink",
            "light brown" if rng.random() < 0.5 else "pink",
            off,
            rng.uniform(0.5, 0.75),
            "structureless areas",
        )
        if rng.random() < 0.75:
            _dotted_vessels(c, rng.uniform(0.8, 1.2))
        if rng.random() < 0.3:
            _blotch(c, "light brown", 0.3, off, 0.6)
        if rng.random() < 0.2:
            _regression(c, anti, 0.25)
    else:  # nodular
        _body(c, "black", "dark brown", off, rng.uniform(0.85, 0.95), "structureless areas")
        if rng.random() < 0.8:
            _veil(c, off, rng.uniform(0.35, 0.6))
        else:
            _blotch(c, "blue-grey", 0.4, anti, 0.7)
        if rng.random() < 0.3:
            _dotted_vessels(c, 0.6, _blotch(c, "pink", 0.3, anti, 0.5))
        if rng.random() < 0.2:
            _ulcer(c, 0.2)


def _paint_bkl(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "seb_k":
        inner, outer = ("dark brown", "light brown") if rng.random() < 0.6 else ("light brown", "light brown")
        _body(c, inner, outer, off, rng.uniform(0.75, 0.92), "structureless areas")
        if rng.random() < 0.65:
            _fissures(c, int(rng.integers(4, 12)))
        if rng.random() < 0.7:
            _milia(c, int(rng.integers(3, 15)))
        if rng.random() < 0.65:
            _comedos(c, int(rng.integers(3, 14)), "black" if rng.random() < 0.35 else "dark brown")
    elif v == "solar_lentigo":
        _body(c, "light brown", "light brown", off, rng.uniform(0.55, 0.75), "structureless areas")
        if rng.random() < 0.5:
            _network(c, "light brown" if rng.random() < 0.5 else "dark brown", True, rng.uniform(0.35, 0.6))
        if rng.random() < 0.25:
            _blotch(c, "dark brown", 0.3, off, 0.5)
    else:  # lichen planus-like keratosis: regressing, grey
        _body(c, "light brown", "light brown", off, rng.uniform(0.35, 0.5))
        _regression(c, off, rng.uniform(0.5, 0.8), pepper="blue-grey")
        if rng.random() < 0.5:
            _dots(c, int(rng.integers(15, 40)), "grey", 0.08, False, "dots", off)


def _paint_bcc(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "nodular":
        _body(c, "pink", "pink", off, rng.uniform(0.45, 0.65), "structureless areas")
        if rng.random() < 0.5:
            _blotch(c, "white", rng.uniform(0.2, 0.35), off, 0.5)
        if rng.random() < 0.9:
            _arborizing(c, int(rng.integers(3, 7)))
        if rng.random() < 0.35:
            _ovoid_nests(c, int(rng.integers(1, 4)), rng.uniform(0.4, 0.8))
        if rng.random() < 0.4:
            _ulcer(c, rng.uniform(0.15, 0.3))
    elif v == "pigmented":
        _body(c, "pink", "light brown", off, rng.uniform(0.4, 0.6))
        _ovoid_nests(c, int(rng.integers(3, 9)), rng.uniform(0.5, 1.1))
        if rng.random() < 0.5:
            _dots(c, int(rng.integers(4, 12)), "dark brown", 0.35, False, "globules", off, dmin=0.5, dmax=0.95)
        if rng.random() < 0.6:
            _arborizing(c, int(rng.integers(1, 4)))
        if rng.random() < 0.3:
            _ulcer(c, rng.uniform(0.12, 0.25))
    else:  # superficial
        _body(c, "pink", "pink", off, rng.uniform(0.35, 0.5), "structureless areas")
        if rng.random() < 0.75:
            _arborizing(c, int(rng.integers(3, 8)), scale=0.4)
        if rng.random() < 0.5:
            _blotch(c, "white", rng.uniform(0.2, 0.35), off, 0.45)
        if rng.random() < 0.35:
            _ulcer(c, rng.uniform(0.08, 0.15))
        if rng.random() < 0.2:
            _ovoid_nests(c, int(rng.integers(1, 3)), 0.35)


def _paint_akiec(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "ak":
        _body(c, "pink", "pink", off, rng.uniform(0.35, 0.55))
        if rng.random() < 0.7:
            _strawberry(c)
        if rng.random() < 0.7:
            _scale(c, rng.uniform(0.0, 0.25))
        if rng.random() < 0.4:
            _dotted_vessels(c, rng.uniform(0.6, 0.9))
    elif v == "bowen":
        _body(c, "pink", "red", off, rng.uniform(0.35, 0.5))
        if rng.random() < 0.85:
            _glomerular(c, int(rng.integers(6, 20)))
        if rng.random() < 0.7:
            _scale(c, rng.uniform(0.0, 0.2))
        if rng.random() < 0.3:
            _dots(c, int(rng.integers(6, 20)), "dark brown", 0.08, False, "dots", off)
    else:  # pigmented actinic keratosis
        _body(c, "light brown", "light brown", off, rng.uniform(0.55, 0.75))
        if rng.random() < 0.5:
            _network(c, "dark brown", False, rng.uniform(0.4, 0.6))
        if rng.random() < 0.6:
            _dots(c, int(rng.integers(10, 30)), "grey", 0.08, False, "dots", off)
        if rng.random() < 0.5:
            _scale(c, rng.uniform(0.0, 0.2))
        if rng.random() < 0.3:
            _strawberry(c)


def _paint_df(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    _body(c, "pink" if rng.random() < 0.5 else "light brown", "light brown", off, rng.uniform(0.45, 0.65))
    if rng.random() < 0.8:
        ring = _smoothstep(0.35, 0.6, c.d) * c.alpha
        _network(c, "light brown" if rng.random() < 0.6 else "dark brown", True, rng.uniform(0.25, 0.45), ring)
    if lesion.variant == "typical":
        _white_patch(c, rng.uniform(0.3, 0.5))
    elif rng.random() < 0.5:
        _blotch(c, "light brown", 0.4, off, 0.6, "structureless areas")
    if rng.random() < 0.25:
        _dotted_vessels(c, 0.5, _smoothstep(0.5, 0.2, c.d))


def _paint_vasc(c: _Canvas, rng: np.random.Generator, lesion: _Lesion) -> None:
    off = _colour_offset(rng, lesion.asymmetry)
    _body(c, "white", "pink", off, 0.45)  # whitish septa between the lacunae
    size = min(rng.uniform(0.5, 1.1), lesion.diameter_mm / 5)
    if lesion.variant == "angioma":
        _lacunae(c, ["red", "dark red"] if rng.random() < 0.7 else ["red", "purple"], size)
    else:
        _lacunae(c, ["dark red", "purple", "black"], size, weights=(0.5, 0.3, 0.2))
        if rng.random() < 0.6:
            _veil(c, off, rng.uniform(0.2, 0.4))
    if rng.random() < 0.3:
        halo = _smoothstep(0.8, 1.0, c.d) * _smoothstep(1.35, 1.05, c.d) * 0.4
        c.paint(halo, "pink")


_PAINTERS: dict[str, Callable[[_Canvas, np.random.Generator, _Lesion], None]] = {
    "akiec": _paint_akiec,
    "bcc": _paint_bcc,
    "bkl": _paint_bkl,
    "df": _paint_df,
    "mel": _paint_mel,
    "nv": _paint_nv,
    "vasc": _paint_vasc,
}


def _render_scene(lesion: _Lesion, size: int, rng: np.random.Generator) -> _Canvas:
    c = _Canvas(lesion, size, rng)
    _PAINTERS[lesion.dx](c, rng, lesion)
    c.box[...] *= (1.0 + 0.05 * c.noise(max(4.0, c.R0 / 5)) * c.alpha)[..., None]  # the lesion's own mottling
    _hair(c, rng)
    return c


def _findings(c: _Canvas, lesion: _Lesion) -> dict:
    """What was drawn, in the fixed vocabulary: colours and structures that cover enough pixels to be seen."""
    colour_min = max(6.0, 0.004 * c.area)
    findings = {
        "asymmetry": lesion.asymmetry,
        "border": lesion.border,
        "colours": [k for k in COLOURS if c.coverage[k] >= colour_min],
        "structures": [s for s in STRUCTURES if c.drawn[s] >= 3],
        "features": [f for f in FEATURES if c.drawn[f] >= 3],
        "diameter_mm": lesion.diameter_mm,
    }
    if "pigment network" in findings["structures"]:
        findings["network"] = c.network
    findings["ulceration"] = "ulceration" in findings["features"]
    return findings


# ---- acquisition: how each domain photographs the scene ----


def _apply_view(c: _Canvas, lesion: _Lesion, rng: np.random.Generator, repeat: bool) -> tuple[Image.Image, np.ndarray]:
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
    ys, xs = _grid(size)
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
            ring = _smoothstep(0.75, 0.95, dist) * _smoothstep(1.1, 0.95, dist)
            img += (ring * 0.5 + (dist < 1) * 0.06)[..., None] * (1 - img)
    floor = np.float32(0.0)
    if rng.random() < 0.65:  # the lens's round field: black outside
        radius = rng.uniform(0.95, 1.35)
        edge = _smoothstep(radius, radius - 0.04, rr)
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
