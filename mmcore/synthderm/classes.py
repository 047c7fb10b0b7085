"""SynthDerm's classes: how each HAM10000 class and its variants are painted, and the scene of one lesion (skin,
the class's painter, the lesion's mottling, hair)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmcore.synthderm.canvas import Canvas, hair, smoothstep
from mmcore.synthderm.priors import Lesion
from mmcore.synthderm.structures import (
    arborizing,
    blotch,
    body,
    colour_offset,
    comedos,
    comma_vessels,
    dots,
    dotted_vessels,
    fissures,
    glomerular,
    lacunae,
    milia,
    network,
    ovoid_nests,
    regression,
    ring_globules,
    scale,
    strawberry,
    streaks,
    ulcer,
    veil,
    white_patch,
)

# Each class is a mix of variants (what a dermatologist sees in practice), and the variants overlap on purpose, so a
# model cannot reach 100%:
# - nv: reticular (regular brown network fading at the rim), globular, homogeneous, dermal (pink-tan with comma
#   vessels: looks like a featureless df or bcc), blue (homogeneous blue-grey: shares colour and veil-like look with
#   nodular mel), and atypical (asymmetric, 3 colours, irregular network and dots: drawn like mel in situ).
# - mel: classic (asymmetric, 3+ colours with blue-grey/black, irregular network, dots/globules, streaks, veil,
#   regression, blotch), in situ (small, 2-3 browns, one-axis asymmetry: like atypical nv), featureless (pink-red,
#   structureless, dotted vessels: like bcc, akiec and dermal nv) and nodular (blue-black, veil: like blue nv and
#   thrombosed vasc).
# - bkl: seborrhoeic keratosis (browns, sharp border, milia-like cysts, comedo-like openings, fissures), solar lentigo
#   (homogeneous light brown, faint network: like nv) and lichen-planus-like keratosis (grey peppering and white
#   areas: the regression of mel).
# - bcc: nodular (pink, arborizing vessels, ulceration), pigmented (blue-grey ovoid nests, dark brown: mel colours),
#   superficial (pink patch, fine vessels, erosions: like akiec).
# - akiec: actinic keratosis (red strawberry pattern, white scale, fine vessels), Bowen's (glomerular vessels, scale)
#   and pigmented AK (browns and grey dots: like solar lentigo and lentigo maligna).
# - df: pink/light brown, central white patch, faint peripheral network; about one in five has no white patch (nv-like).
# - vasc: angioma (red lacunae, whitish septa) and thrombosed (dark red/black lacunae, blue-whitish veil: like mel).


def _extra_colours(rng: np.random.Generator, table: dict[str, float], at_least: int) -> list[str]:
    chosen = [k for k, p in table.items() if rng.random() < p]
    rest = [k for k in table if k not in chosen]
    while len(chosen) < at_least and rest:
        chosen.append(rest.pop(int(rng.integers(len(rest)))))
    return chosen


def _paint_nv(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "reticular":
        inner, outer = [("dark brown", "light brown"), ("light brown", "light brown"), ("dark brown", "dark brown")][
            int(rng.choice(3, p=(0.55, 0.3, 0.15)))
        ]
        body(c, inner, outer, off, rng.uniform(0.75, 0.9))
        fade = smoothstep(1.0, 0.55, c.d) * c.alpha
        network(c, "dark brown", True, rng.uniform(0.55, 0.8), fade)
        if rng.random() < 0.3:
            blotch(c, "dark brown", rng.uniform(0.2, 0.35), off, 0.75, "structureless areas")
        if rng.random() < 0.2:
            dots(c, int(rng.integers(5, 15)), "dark brown", 0.1, True, "dots", dmax=0.6)
    elif v == "globular":
        body(c, "light brown", rng.choice(["light brown", "dark brown"]), off, rng.uniform(0.5, 0.75))
        if rng.random() < 0.35:
            ring_globules(c, "dark brown", rng.uniform(0.25, 0.35))
        else:
            n = int(np.clip(c.area / (0.6 * c.px_mm) ** 2, 10, 120))
            dots(c, n, "dark brown", rng.uniform(0.2, 0.3), True, "globules")
    elif v == "homogeneous":
        colour = rng.choice(["light brown", "dark brown"], p=(0.6, 0.4))
        body(c, colour, "light brown", off, rng.uniform(0.7, 0.9), "structureless areas")
    elif v == "dermal":
        body(c, "pink", "light brown", off, rng.uniform(0.4, 0.6), "structureless areas")
        if rng.random() < 0.7:
            comma_vessels(c, int(rng.integers(4, 14)))
        if rng.random() < 0.4:
            dots(c, int(rng.integers(4, 10)), "light brown", 0.25, True, "globules", dmax=0.6)
    elif v == "blue":
        body(c, "blue-grey", "blue-grey", off, rng.uniform(0.75, 0.9), "structureless areas")
        if rng.random() < 0.4:
            blotch(c, "dark brown", 0.3, off, 0.5)
    else:  # atypical: drawn like an early melanoma
        body(c, "light brown", "light brown", off, rng.uniform(0.6, 0.8))
        blotch(c, "dark brown", rng.uniform(0.3, 0.5), off, 0.85, "structureless areas")
        network(c, "dark brown", False, rng.uniform(0.6, 0.85))
        if rng.random() < 0.6:
            colour = "black" if rng.random() < 0.3 else "dark brown"
            dots(c, int(rng.integers(6, 20)), colour, rng.uniform(0.1, 0.25), False, "dots", off)
        if rng.random() < 0.2:
            blotch(c, "pink", 0.3, (-off[0], -off[1]), 0.4)


def _paint_mel(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    anti = (-off[0] * 1.2, -off[1] * 1.2)
    v = lesion.variant
    if v == "classic":
        extra = _extra_colours(rng, {"black": 0.7, "blue-grey": 0.65, "white": 0.35, "red": 0.25}, 1)
        body(c, "dark brown", "light brown", off, rng.uniform(0.75, 0.9))
        if rng.random() < 0.6:
            network(c, rng.choice(["dark brown", "black"]), False, rng.uniform(0.6, 0.9))
        if "black" in extra or rng.random() < 0.3:
            blotch(
                c, "black" if "black" in extra else "dark brown", rng.uniform(0.2, 0.4), off, 0.9, "structureless areas"
            )
        if rng.random() < 0.6:
            colour = "black" if "black" in extra else "dark brown"
            size = rng.choice([0.1, 0.25])
            dots(c, int(rng.integers(8, 30)), colour, size, False, "dots" if size < 0.2 else "globules", off)
        if rng.random() < 0.4:
            streaks(c, rng.choice(["dark brown", "black"]), rng.uniform(0.6, 2.2), int(rng.integers(5, 14)))
        if "blue-grey" in extra:
            if rng.random() < 0.6:
                veil(c, off, rng.uniform(0.25, 0.45))
            else:
                blotch(c, "blue-grey", rng.uniform(0.2, 0.35), anti, 0.7, "structureless areas")
        if "white" in extra:
            regression(c, anti, rng.uniform(0.25, 0.4))
        if "red" in extra:
            if rng.random() < 0.5:
                dotted_vessels(c, rng.uniform(0.7, 1.1), blotch(c, "pink", 0.35, anti, 0.5))
            else:
                blotch(c, "pink", 0.35, anti, 0.6, "structureless areas")
    elif v == "in_situ":
        body(c, "light brown", "light brown", off, rng.uniform(0.6, 0.8))
        blotch(c, "dark brown", rng.uniform(0.25, 0.45), off, 0.8)
        network(c, "dark brown", False, rng.uniform(0.6, 0.85))
        if rng.random() < 0.5:
            dots(c, int(rng.integers(5, 15)), "dark brown", 0.1, False, "dots", off)
        if rng.random() < 0.3:
            regression(c, anti, 0.3)
    elif v == "featureless":
        body(
            c,
            "pink",
            "light brown" if rng.random() < 0.5 else "pink",
            off,
            rng.uniform(0.5, 0.75),
            "structureless areas",
        )
        if rng.random() < 0.75:
            dotted_vessels(c, rng.uniform(0.8, 1.2))
        if rng.random() < 0.3:
            blotch(c, "light brown", 0.3, off, 0.6)
        if rng.random() < 0.2:
            regression(c, anti, 0.25)
    else:  # nodular
        body(c, "black", "dark brown", off, rng.uniform(0.85, 0.95), "structureless areas")
        if rng.random() < 0.8:
            veil(c, off, rng.uniform(0.35, 0.6))
        else:
            blotch(c, "blue-grey", 0.4, anti, 0.7)
        if rng.random() < 0.3:
            dotted_vessels(c, 0.6, blotch(c, "pink", 0.3, anti, 0.5))
        if rng.random() < 0.2:
            ulcer(c, 0.2)


def _paint_bkl(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "seb_k":
        inner, outer = ("dark brown", "light brown") if rng.random() < 0.6 else ("light brown", "light brown")
        body(c, inner, outer, off, rng.uniform(0.75, 0.92), "structureless areas")
        if rng.random() < 0.65:
            fissures(c, int(rng.integers(4, 12)))
        if rng.random() < 0.7:
            milia(c, int(rng.integers(3, 15)))
        if rng.random() < 0.65:
            comedos(c, int(rng.integers(3, 14)), "black" if rng.random() < 0.35 else "dark brown")
    elif v == "solar_lentigo":
        body(c, "light brown", "light brown", off, rng.uniform(0.55, 0.75), "structureless areas")
        if rng.random() < 0.5:
            network(c, "light brown" if rng.random() < 0.5 else "dark brown", True, rng.uniform(0.35, 0.6))
        if rng.random() < 0.25:
            blotch(c, "dark brown", 0.3, off, 0.5)
    else:  # lichen planus-like keratosis: regressing, grey
        body(c, "light brown", "light brown", off, rng.uniform(0.35, 0.5))
        regression(c, off, rng.uniform(0.5, 0.8), pepper="blue-grey")
        if rng.random() < 0.5:
            dots(c, int(rng.integers(15, 40)), "grey", 0.08, False, "dots", off)


def _paint_bcc(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "nodular":
        body(c, "pink", "pink", off, rng.uniform(0.45, 0.65), "structureless areas")
        if rng.random() < 0.5:
            blotch(c, "white", rng.uniform(0.2, 0.35), off, 0.5)
        if rng.random() < 0.9:
            arborizing(c, int(rng.integers(3, 7)))
        if rng.random() < 0.35:
            ovoid_nests(c, int(rng.integers(1, 4)), rng.uniform(0.4, 0.8))
        if rng.random() < 0.4:
            ulcer(c, rng.uniform(0.15, 0.3))
    elif v == "pigmented":
        body(c, "pink", "light brown", off, rng.uniform(0.4, 0.6))
        ovoid_nests(c, int(rng.integers(3, 9)), rng.uniform(0.5, 1.1))
        if rng.random() < 0.5:
            dots(c, int(rng.integers(4, 12)), "dark brown", 0.35, False, "globules", off, dmin=0.5, dmax=0.95)
        if rng.random() < 0.6:
            arborizing(c, int(rng.integers(1, 4)))
        if rng.random() < 0.3:
            ulcer(c, rng.uniform(0.12, 0.25))
    else:  # superficial
        body(c, "pink", "pink", off, rng.uniform(0.35, 0.5), "structureless areas")
        if rng.random() < 0.75:
            arborizing(c, int(rng.integers(3, 8)), scale=0.4)
        if rng.random() < 0.5:
            blotch(c, "white", rng.uniform(0.2, 0.35), off, 0.45)
        if rng.random() < 0.35:
            ulcer(c, rng.uniform(0.08, 0.15))
        if rng.random() < 0.2:
            ovoid_nests(c, int(rng.integers(1, 3)), 0.35)


def _paint_akiec(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    v = lesion.variant
    if v == "ak":
        body(c, "pink", "pink", off, rng.uniform(0.35, 0.55))
        if rng.random() < 0.7:
            strawberry(c)
        if rng.random() < 0.7:
            scale(c, rng.uniform(0.0, 0.25))
        if rng.random() < 0.4:
            dotted_vessels(c, rng.uniform(0.6, 0.9))
    elif v == "bowen":
        body(c, "pink", "red", off, rng.uniform(0.35, 0.5))
        if rng.random() < 0.85:
            glomerular(c, int(rng.integers(6, 20)))
        if rng.random() < 0.7:
            scale(c, rng.uniform(0.0, 0.2))
        if rng.random() < 0.3:
            dots(c, int(rng.integers(6, 20)), "dark brown", 0.08, False, "dots", off)
    else:  # pigmented actinic keratosis
        body(c, "light brown", "light brown", off, rng.uniform(0.55, 0.75))
        if rng.random() < 0.5:
            network(c, "dark brown", False, rng.uniform(0.4, 0.6))
        if rng.random() < 0.6:
            dots(c, int(rng.integers(10, 30)), "grey", 0.08, False, "dots", off)
        if rng.random() < 0.5:
            scale(c, rng.uniform(0.0, 0.2))
        if rng.random() < 0.3:
            strawberry(c)


def _paint_df(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    body(c, "pink" if rng.random() < 0.5 else "light brown", "light brown", off, rng.uniform(0.45, 0.65))
    if rng.random() < 0.8:
        ring = smoothstep(0.35, 0.6, c.d) * c.alpha
        network(c, "light brown" if rng.random() < 0.6 else "dark brown", True, rng.uniform(0.25, 0.45), ring)
    if lesion.variant == "typical":
        white_patch(c, rng.uniform(0.3, 0.5))
    elif rng.random() < 0.5:
        blotch(c, "light brown", 0.4, off, 0.6, "structureless areas")
    if rng.random() < 0.25:
        dotted_vessels(c, 0.5, smoothstep(0.5, 0.2, c.d))


def _paint_vasc(c: Canvas, rng: np.random.Generator, lesion: Lesion) -> None:
    off = colour_offset(rng, lesion.asymmetry)
    body(c, "white", "pink", off, 0.45)  # whitish septa between the lacunae
    size = min(rng.uniform(0.5, 1.1), lesion.diameter_mm / 5)
    if lesion.variant == "angioma":
        lacunae(c, ["red", "dark red"] if rng.random() < 0.7 else ["red", "purple"], size)
    else:
        lacunae(c, ["dark red", "purple", "black"], size, weights=(0.5, 0.3, 0.2))
        if rng.random() < 0.6:
            veil(c, off, rng.uniform(0.2, 0.4))
    if rng.random() < 0.3:
        halo = smoothstep(0.8, 1.0, c.d) * smoothstep(1.35, 1.05, c.d) * 0.4
        c.paint(halo, "pink")


_PAINTERS: dict[str, Callable[[Canvas, np.random.Generator, Lesion], None]] = {
    "akiec": _paint_akiec,
    "bcc": _paint_bcc,
    "bkl": _paint_bkl,
    "df": _paint_df,
    "mel": _paint_mel,
    "nv": _paint_nv,
    "vasc": _paint_vasc,
}


def render_scene(lesion: Lesion, size: int, rng: np.random.Generator, with_lesion: bool = True) -> Canvas:
    """The scene of one lesion: skin, the class's painter, the lesion's mottling, then hair over everything."""
    c = Canvas(lesion, size, rng)
    skin = None if with_lesion else c.img.copy()
    _PAINTERS[lesion.dx](c, rng, lesion)
    c.box[...] *= (1.0 + 0.05 * c.noise(max(4.0, c.R0 / 5)) * c.alpha)[..., None]  # the lesion's own mottling
    if skin is not None:  # painted all the same, so that the random stream (and so the hair) stays the case's own
        c.img = skin
    hair(c, rng)
    return c
