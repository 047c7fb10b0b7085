"""SynthDerm contact sheet: 4 samples per class (rows) in each acquisition domain (column groups).

    python bench/contact_sheet.py [--seed 0] [--tile 120] [--jpg-tile 224]

Writes docs/synthderm_contact_sheet.png (small tiles, under 1.5 MB) and, unless --jpg-tile 0, a full-size JPEG
beside it. Only the first view of each lesion is shown (re-takes of one lesion would repeat it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mmcore.cases import DOMAINS, DX_CLASSES
from mmcore.synthderm import generate_one

REPO = Path(__file__).resolve().parent.parent


def pick_samples(seed: int, per_cell: int, size: int) -> dict[tuple[str, str], list]:
    """The first `per_cell` balanced cases of each class in each single-domain dataset."""
    cells: dict[tuple[str, str], list] = {(dx, dom): [] for dx in DX_CLASSES for dom in DOMAINS}
    for dom in DOMAINS:
        index = 0
        while any(len(cells[(dx, dom)]) < per_cell for dx in DX_CLASSES):
            sc = generate_one(index, seed, domains=(dom,), balanced=True, size=size)
            first_view = sc.case.lesion_id.endswith(f"L{index:06d}")  # show lesions, not re-takes of one
            if first_view and len(cells[(sc.case.dx, dom)]) < per_cell:
                cells[(sc.case.dx, dom)].append(sc)
            index += 1
    return cells


def build_sheet(seed: int = 0, per_cell: int = 4, tile: int = 128, size: int = 224):
    cells = pick_samples(seed, per_cell, size)
    label_w, head_h, gap = 70, 24, 8
    width = label_w + len(DOMAINS) * (per_cell * tile + gap)
    height = head_h + len(DX_CLASSES) * tile
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for j, dom in enumerate(DOMAINS):
        x = label_w + j * (per_cell * tile + gap)
        draw.text((x + 4, 3), dom, fill=(0, 0, 0), font=font)
        for i, dx in enumerate(DX_CLASSES):
            for k, sc in enumerate(cells[(dx, dom)]):
                img = sc.image.resize((tile, tile), Image.LANCZOS)
                sheet.paste(img, (x + k * tile, head_h + i * tile))
    for i, dx in enumerate(DX_CLASSES):
        draw.text((6, head_h + i * tile + tile // 2 - 8), dx, fill=(0, 0, 0), font=font)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=120, help="tile side in the PNG")
    parser.add_argument("--jpg-tile", type=int, default=224, help="tile side in the JPEG (0: no JPEG)")
    parser.add_argument("--per-cell", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "docs" / "synthderm_contact_sheet.png"))
    args = parser.parse_args()
    sheet = build_sheet(args.seed, args.per_cell, args.tile)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"{out}: {sheet.width} x {sheet.height}, {out.stat().st_size / 1e6:.2f} MB")
    if args.jpg_tile:
        big = build_sheet(args.seed, args.per_cell, args.jpg_tile)
        jpg = out.with_suffix(".jpg")
        big.save(jpg, quality=85, optimize=True)
        print(f"{jpg}: {big.width} x {big.height}, {jpg.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
