"""Inputs unlike SynthDerm for the OOD benchmark (bench/ood.py), made by our own code or shipped by installed packages:
far-OOD images (scikit-image samples, pages of text, app screenshots, flat colours, noise, checkerboards, a drawn
fundus photo, landscape-like gradients, each also cropped) and odd notes (gibberish, other languages, blank
templates, notes without clinical content), plus realistic clinician-written English notes that should pass.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parent.parent
SKIMAGE_SAMPLES = (
    "chelsea", "cat", "astronaut", "coffee", "rocket", "camera", "text", "brick", "grass", "gravel", "coins", "moon",
    "page", "horse", "clock", "hubble_deep_field", "immunohistochemistry", "colorwheel", "logo", "retina", "cell",
    "binary_blobs", "shepp_logan_phantom", "checkerboard",
)  # fmt: skip


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(float(array.max() - array.min()), 1e-9)).astype(np.uint8)
    image = Image.fromarray(array)
    return image.convert("RGB")


def skimage_images() -> list[tuple[str, Image.Image]]:
    """The scikit-image sample images that ship inside the package (no download)."""
    import skimage.data

    return [(f"skimage:{name}", _rgb(getattr(skimage.data, name)())) for name in SKIMAGE_SAMPLES]


def text_pages(n: int = 6, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Scanned-looking pages of text: black on white or cream, several type sizes, a slight tilt."""
    rng = random.Random(seed)
    words = [
        "the",
        "lesion",
        "patient",
        "report",
        "clinic",
        "skin",
        "photo",
        "follow",
        "review",
        "history",
        "of",
        "and",
        "with",
        "on",
        "in",
        "a",
        "to",
    ]
    out = []
    for i in range(n):
        page = Image.new("RGB", (620, 820), rng.choice(["white", (250, 246, 232), (238, 238, 238)]))
        draw = ImageDraw.Draw(page)
        size = rng.choice([12, 14, 18, 24])
        font = ImageFont.load_default(size=size)
        y = 40
        while y < 780:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 11)))
            draw.text((40, y), line.capitalize() + ".", fill=(20, 20, 20), font=font)
            y += int(size * 1.5)
        out.append((f"text_page:{i}", page.rotate(rng.uniform(-3, 3), fillcolor="white")))
    return out


def screenshots() -> list[tuple[str, Image.Image]]:
    """The app's own screenshots (docs/screenshots)."""
    return [
        (f"screenshot:{p.stem}", Image.open(p).convert("RGB"))
        for p in sorted((REPO / "docs/screenshots").glob("*.png"))
    ]


def flat_colours() -> list[tuple[str, Image.Image]]:
    """Uniform images, skin-coloured ones included."""
    colours = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (200, 30, 30),
               "blue": (30, 60, 200), "skin_light": (233, 196, 170), "skin_dark": (120, 80, 55)}  # fmt: skip
    return [(f"flat:{name}", Image.new("RGB", (224, 224), c)) for name, c in colours.items()]


def noise_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Gaussian, uniform, salt-and-pepper and smooth (low-frequency) noise."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((224, 224), Image.BICUBIC)
    return [
        ("noise:gaussian", Image.fromarray(np.clip(rng.normal(128, 50, (224, 224, 3)), 0, 255).astype(np.uint8))),
        ("noise:uniform", Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))),
        ("noise:salt_pepper", Image.fromarray((rng.random((224, 224)) < 0.5).astype(np.uint8) * 255).convert("RGB")),
        ("noise:smooth", smooth),
    ]


def checkerboards() -> list[tuple[str, Image.Image]]:
    """Black-and-white and coloured checkerboards of several square sizes."""
    out = []
    for cell, (a, b) in ((8, (0, 255)), (28, (0, 255)), (56, ((200, 40, 40), (240, 240, 240)))):
        yy, xx = np.mgrid[:224, :224]
        mask = ((yy // cell + xx // cell) % 2).astype(bool)
        img = np.zeros((224, 224, 3), np.uint8)
        img[mask], img[~mask] = a, b
        out.append((f"checkerboard:{cell}", Image.fromarray(img)))
    return out


def fundus_photos(n: int = 3, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """A drawn retinal fundus photo: orange-red disc on black, a bright optic disc, dark branching vessels."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        img = Image.new("RGB", (448, 448), "black")
        draw = ImageDraw.Draw(img)
        draw.ellipse((14, 14, 434, 434), fill=(rng.randint(190, 230), rng.randint(80, 110), rng.randint(30, 50)))
        ox, oy = rng.choice([(140, 224), (308, 224)])
        draw.ellipse((ox - 32, oy - 32, ox + 32, oy + 32), fill=(250, 220, 150))
        for _ in range(8):  # vessels leave the optic disc and branch
            x, y, angle, width = ox, oy, rng.uniform(0, 2 * math.pi), 7
            for _ in range(14):
                angle += rng.uniform(-0.35, 0.35)
                nx, ny = x + 18 * math.cos(angle), y + 18 * math.sin(angle)
                draw.line((x, y, nx, ny), fill=(110, 20, 20), width=max(int(width), 1))
                x, y, width = nx, ny, width * 0.9
        draw.ellipse((ox + rng.choice([-1, 1]) * 150 - 20, 204, ox + rng.choice([-1, 1]) * 150 + 20, 244),
                     fill=(150, 50, 20))  # fmt: skip
        out.append((f"fundus:{i}", img.filter(ImageFilter.GaussianBlur(1.2))))
    return out


def landscapes(n: int = 3, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Landscape-like images: a sky gradient, mountain silhouettes and a green or sandy foreground."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = np.linspace(0, 1, 224)[:, None, None]
        top, horizon = np.array([40, 90, 190]), np.array([200, 225, 250])
        sky = (top * (1 - t) + horizon * t) * np.ones((224, 224, 3))
        img = Image.fromarray(sky.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        points = [(0, 150)] + [(x, rng.randint(70, 140)) for x in range(0, 240, 28)] + [(224, 150)]
        draw.polygon(points + [(224, 224), (0, 224)], fill=(rng.randint(70, 110), rng.randint(80, 100), 110))
        ground = rng.choice([(60, 140, 50), (210, 190, 130)])
        draw.rectangle((0, 160 + rng.randint(-10, 10), 224, 224), fill=ground)
        out.append((f"landscape:{i}", img.filter(ImageFilter.GaussianBlur(0.8))))
    return out


def crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop of 40-80% of each side (an augmentation that keeps the content unlike a lesion)."""
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.4, 0.8)), int(h * rng.uniform(0.4, 0.8))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def far_ood_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Every far-OOD image, each once as made and once randomly cropped."""
    rng = random.Random(seed)
    base = (skimage_images() + text_pages() + screenshots() + flat_colours() + noise_images() + checkerboards()
            + fundus_photos() + landscapes())  # fmt: skip
    crops = [(f"{name}/crop", crop(img, rng)) for name, img in base if not name.startswith("flat:")]
    return base + crops


# ---- notes ----

_GERMAN = (
    "Patientin, {age} Jahre. Pigmentierte Läsion am {site_de}, seit {months} Monaten größer geworden, unscharf "
    "begrenzt, {colour_de}.",
    "{age}-jähriger Patient mit einem juckenden Knoten am {site_de}. Keine Blutung. Farbe {colour_de}.",
    "Befund: unregelmäßig pigmentierter Fleck am {site_de}, Durchmesser etwa {mm} mm, seit {months} Monaten bekannt.",
)
_SPANISH = (
    "Paciente de {age} años con una lesión pigmentada en la {site_es}, de {mm} mm, que ha crecido en los últimos "
    "{months} meses. Color {colour_es}.",
    "Mujer de {age} años. Mancha {colour_es} en la {site_es}, bordes irregulares, sin sangrado.",
    "Varón de {age} años, lesión en la {site_es} desde hace {months} meses, con picor ocasional.",
)
_FRENCH = (
    "Patient de {age} ans, lésion pigmentée du {site_fr}, {mm} mm, apparue il y a {months} mois, couleur {colour_fr}.",
    "Femme de {age} ans. Tache {colour_fr} sur le {site_fr}, bords irréguliers, pas de saignement.",
)
_SITES = {"de": ("Rücken", "Unterarm", "Oberschenkel", "Hals"), "es": ("espalda", "pierna", "cara", "mano"),
          "fr": ("dos", "bras", "visage", "cou")}  # fmt: skip
_COLOURS = {"de": ("braun", "dunkelbraun", "schwarz-braun", "rötlich"), "es": ("marrón", "oscura", "rojiza", "negra"),
            "fr": ("brune", "noire", "rougeâtre", "marron")}  # fmt: skip
_TEMPLATES = (
    "Patient name: ____ DOB: ____ Findings: ____",
    "Name: [  ]\nDate of birth: [  ]\nMRN: [  ]\nReferring physician: [  ]\nFindings: [  ]\nPlan: [  ]",
    "PATIENT: ________ ID: ________ DATE: __/__/____ COMMENTS: ____________",
    "Name: {{name}} DOB: {{dob}} Dx: {{dx}} Plan: {{plan}}",
    "Patient: <name> Date: <date> Notes: <insert notes here>",
    "Surname: ___ First name: ___ Date: ___ Signature: ___",
    "Form 12-B. Section 1: ____. Section 2: ____. Section 3: ____.",
    "ID: ____ Visit date: ____ Reviewer: ____ Result: ____",
)
_EMPTY = (
    "see attached", "seen today", "photo for the records", "as discussed", "follow up", "n/a", "none",
    "no comment", "pt seen, photo taken", "review next time", "nothing to add", "ok", "thanks", "see photo",
    "Please see the image.", "Reviewed with the patient today.", "Discussed with colleague.", "To be reviewed.",
    "Nothing further.", "Will call back.",
)  # fmt: skip


def gibberish_notes(n: int = 40, seed: int = 0) -> list[str]:
    """Keyboard mashing and random letter strings of varied length."""
    rng = random.Random(seed)
    rows = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
    out = ["asdf qwer zxcv", "asdf asdf asdf", "lorem ipsum dolor sit amet", "jjjjjj kkkkk llll"]
    while len(out) < n:
        pool = rng.choice(rows) if rng.random() < 0.5 else "abcdefghijklmnopqrstuvwxyz"
        out.append(
            " ".join("".join(rng.choice(pool) for _ in range(rng.randint(2, 9))) for _ in range(rng.randint(2, 25)))
        )
    return out


def foreign_notes(n: int = 45, seed: int = 0) -> list[str]:
    """Clinical notes in German, Spanish and French."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lang, templates = (("de", _GERMAN), ("es", _SPANISH), ("fr", _FRENCH))[i % 3]
        fields = {"age": rng.randint(18, 85), "months": rng.randint(2, 36), "mm": rng.randint(3, 15)}
        fields[f"site_{lang}"] = rng.choice(_SITES[lang])
        fields[f"colour_{lang}"] = rng.choice(_COLOURS[lang])
        out.append(rng.choice(templates).format(**fields))
    return out


def template_notes(n: int = 32, seed: int = 0) -> list[str]:
    """Blank forms pasted instead of a note, with varied blanks and case."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = _TEMPLATES[i % len(_TEMPLATES)]
        if i >= len(_TEMPLATES):
            text = text.replace("____", "_" * rng.randint(2, 8)).replace("[  ]", rng.choice(["[ ]", "[]", "..."]))
            text = text.upper() if rng.random() < 0.3 else text
        out.append(text)
    return out


def contentless_notes(n: int = 40, seed: int = 0) -> list[str]:
    """Notes that say nothing about the lesion, alone or two together."""
    rng = random.Random(seed)
    out = list(_EMPTY)
    while len(out) < n:
        a, b = rng.sample(_EMPTY, 2)
        out.append(f"{a.rstrip('.').capitalize()}. {b.capitalize()}")
    return out[:n]


REALISTIC_NOTES = (
    "62 yo male, pigmented lesion on the upper back noticed by his wife, has grown over the past 6 months. "
    "Irregular border, two shades of brown with a darker area at one edge, about 8 mm. No bleeding.",
    "Woman aged 45 with a longstanding mole on the left thigh, unchanged for years, symmetric, light brown, 4 mm.",
    "Pink pearly papule on the nose of a 71-year-old man, present for a year, bled twice. Fine vessels visible.",
    "38F. New dark spot on the sole of the foot, 5 mm, irregular outline. Family history of melanoma in her father.",
    "Scaly red patch on the forehead of an 80 year old farmer, rough to touch, about 1 cm, occasionally itchy.",
    "Firm brown nodule on the lower leg, dimples when pinched, present for several years, no change.",
    "Elderly woman with a stuck-on warty brown plaque on the chest, 12 mm, sharply demarcated, no symptoms.",
    "Small bright red papule on the trunk of a 30-year-old, blanches with pressure, appeared a few months ago.",
    "55M, changing mole on the shoulder: bigger, darker and itchy for 3 months. Asymmetric, black and brown, 9 mm.",
    "Child aged 9, uniform tan macule on the arm since birth, regular edges, about 6 mm, parents worried.",
)
