"""Writes assets/examples/: SynthDerm cases of several classes and acquisition domains (with a clinician-style note)
and one photo that is not a lesion, for a first visit to try Diagnose without a photo of its own. Our own code
draws every image. Run from the repository root: `python assets/make_examples.py`."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from mmcore.notes import write_note
from mmcore.synthderm import generate_one

HERE = Path(__file__).resolve().parent / "examples"
WANTED = [("mel", "dermoscopy"), ("nv", "dermoscopy"), ("bcc", "clinical"), ("bkl", "atlas"), ("vasc", "clinical")]
SEED = 20261202  # a dataset seed the demo never trains on


def find(dx: str, domain: str) -> tuple[int, object]:
    for index in range(5000):
        case = generate_one(index, seed=SEED, domains=(domain,), balanced=True, size=320)
        if case.case.dx == dx:
            return index, case
    raise LookupError(f"no {dx} in {domain}")


def text_page(path: Path) -> None:
    page = Image.new("RGB", (320, 400), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    for i in range(20):
        draw.text((16, 14 + 19 * i), "Referral letter: please review the patient's medication list", fill=(20, 20, 20))
    page.save(path, quality=88)


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    index = []
    for dx, domain in WANTED:
        i, case = find(dx, domain)
        name = f"{dx}_{domain}.jpg"
        case.image.save(HERE / name, quality=88)
        note = write_note("clinical", case.case, seed=SEED)
        index.append({"file": name, "dx": dx, "domain": domain, "note": note, "synthderm": f"seed {SEED}, case {i}"})
    text_page(HERE / "not_a_lesion.jpg")
    index.append(
        {
            "file": "not_a_lesion.jpg",
            "dx": None,
            "domain": None,
            "note": "",
            "synthderm": "a page of text: what the out-of-distribution gate is for",
        }
    )
    (HERE / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
