"""SynthDerm's priors: HAM10000-like class prevalence and metadata tables, and one lesion drawn from them (class,
variant, age, sex, site, skin type, history, size, shape and where it sits in the picture)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmcore.cases import DX_CLASSES, DX_TYPES
from mmcore.findings import BORDERS

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


# ---- the lesion: class, variant, metadata and what to draw ----


@dataclass
class Lesion:
    """One lesion's plan: class, variant, domain, patient metadata, and what to draw (size, shape, framing)."""

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


def sample_lesion(rng: np.random.Generator, domains: tuple[str, ...], balanced: bool) -> Lesion:
    """A lesion from HAM10000's class prevalence (or all classes alike when `balanced`) and the class's priors."""
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
    return Lesion(
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
    border = BORDERS[int(rng.choice(3, p=np.array(border_w) / sum(border_w)))]
    return asymmetry, border
