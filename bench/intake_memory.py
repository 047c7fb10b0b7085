"""Intake memory: peak RSS and time of `python -m mmcore check-image FILE` (the upload intake, full-size decode) on the
worst uploads it accepts, and on the tiny files that cost gigabytes before the upload cap (issue 13, item 3).

    python bench/intake_memory.py [--out bench/results/intake_memory.md]

Each file is flat colour, so a few hundred kilobytes declare the most pixels the intake lets through: large RGB, 16-bit
greyscale, palette with transparency, RGBA turned by EXIF, progressive JPEG (4:4:4 and CMYK, whose decoder holds
every DCT coefficient) and HEIC, each at the largest size accepted. Every command runs in a fresh process; its peak
RSS is `ru_maxrss` of that child alone (`resource.getrusage(RUSAGE_CHILDREN)` in a wrapper process), the python +
Pillow + pillow-heif baseline included. Bar (the issue): at most 300 MB on any accepted upload.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mmcore.config import load_config
from mmcore.images import MAX_CONCURRENT_DECODES

REPO = Path(__file__).resolve().parent.parent
HEIC_FIXTURE = REPO / "tests" / "fixtures" / "intake" / "flat_5000x5000.heic"
BAR_MB = 300
_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall)
print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr.strip()[-300:])
"""


def measure(argv: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, wall seconds, last line of output) of one command in its own process."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True, cwd=REPO)
    head, _, tail = out.stdout.partition("\n")
    code, rss_kb, wall = head.split()
    return int(code), int(rss_kb) / 1024, float(wall), tail.strip()


def _side(pixels: int) -> int:
    return int(pixels**0.5)


def _save(image: Image.Image, path: Path, fmt: str, **kw) -> Path:
    image.save(path, format=fmt, **kw)
    return path


def _exif_turned() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW": the intake turns the whole picture, a second buffer for a moment
    return exif.tobytes()


def uploads(folder: Path, upload_cap: int) -> dict[str, tuple[Callable[[], Path], str]]:
    """name -> (how to write the file, what it is)."""
    side = _side(upload_cap)
    rgb = (180, 120, 90)
    # A progressive JPEG decoder holds 4 bytes a pixel of picture and 2 per coefficient: the intake allows it
    # 8 bytes per pixel of the cap (mmcore.images._BYTES_PER_PIXEL), so 20 MP at 4:4:4 and 16.7 MP in CMYK.
    prog_444 = _side(8 * upload_cap // (4 + 2 * 3))
    prog_cmyk = _side(8 * upload_cap // (4 + 2 * 4))

    def grey16() -> Path:
        arr = np.zeros((side, side), dtype=np.uint16)
        arr[:, : side // 2] = 40_000
        return _save(Image.fromarray(arr), folder / "grey16.png", "PNG")

    def palette() -> Path:
        img = Image.new("P", (side, side), 1)
        img.putpalette([255, 255, 255, *rgb] + [0] * 762)
        return _save(img, folder / "palette.png", "PNG", transparency=0)

    def heic() -> Path:
        if HEIC_FIXTURE.is_file():
            return HEIC_FIXTURE
        import pillow_heif

        path = folder / "flat.heic"
        pillow_heif.from_pillow(Image.new("RGB", (side, side), rgb)).save(path, quality=50)  # ~25 s to encode
        return path

    return {
        f"large RGB PNG {side} x {side}": (
            lambda: _save(Image.new("RGB", (side, side), rgb), folder / "rgb.png", "PNG"),
            "8-bit RGB",
        ),
        f"16-bit greyscale PNG {side} x {side}": (grey16, "rescaled to 8 bits a strip at a time"),
        f"palette PNG with transparency {side} x {side}": (palette, "expanded to RGBA, flattened on white"),
        f"RGBA PNG {side} x {side}, EXIF orientation 6": (
            lambda: _save(
                Image.new("RGBA", (side, side), (*rgb, 128)), folder / "rgba.png", "PNG", exif=_exif_turned()
            ),
            "turned, then flattened",
        ),
        f"baseline JPEG 4:4:4 {side} x {side}, EXIF orientation 6": (
            lambda: _save(
                Image.new("RGB", (side, side), rgb), folder / "base.jpg", "JPEG", subsampling=0, exif=_exif_turned()
            ),
            "decoded a row of blocks at a time, then turned",
        ),
        f"progressive JPEG 4:4:4 {prog_444} x {prog_444}": (
            lambda: _save(
                Image.new("RGB", (prog_444,) * 2, rgb), folder / "prog.jpg", "JPEG", progressive=True, subsampling=0
            ),
            "every coefficient held until the last scan",
        ),
        f"progressive CMYK JPEG {prog_cmyk} x {prog_cmyk}": (
            lambda: _save(
                Image.new("CMYK", (prog_cmyk,) * 2, (0, 60, 90, 40)), folder / "cmyk.jpg", "JPEG", progressive=True
            ),
            "four components of coefficients",
        ),
        f"HEIC {side} x {side}": (heic, "decoded by libheif, copied into Pillow"),
    }


def refused(folder: Path) -> dict[str, tuple[Callable[[], Path], str]]:
    """The issue's two tiny files: 49 megapixels each, accepted before the upload cap."""

    def grey16() -> Path:
        return _save(Image.fromarray(np.zeros((7000, 7000), dtype=np.uint16)), folder / "big16.png", "PNG")

    return {
        "PNG 7000 x 7000 (the issue's 0.14 MB, 49 MP)": (
            lambda: _save(Image.new("RGB", (7000, 7000), (180, 120, 90)), folder / "big.png", "PNG"),
            "refused before decoding",
        ),
        "16-bit greyscale PNG 7000 x 7000 (the issue's 0.10 MB)": (grey16, "refused before decoding"),
        "progressive JPEG 4:4:4 5000 x 5000 (a baseline one is accepted)": (
            lambda: _save(
                Image.new("RGB", (5000, 5000), (180, 120, 90)), folder / "prog25.jpg", "JPEG", progressive=True,
                subsampling=0,
            ),
            "refused: 250 MB of coefficients and picture",
        ),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "intake_memory.md"))
    args = parser.parse_args()
    cap = load_config().intake.upload_max_pixels
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = folder / "not_an_image.txt"
        text.write_text("hello\n")
        code, base_rss, base_wall, _ = measure([sys.executable, "-m", "mmcore", "check-image", str(text)])
        for group, accepted in ((uploads(folder, cap), True), (refused(folder), False)):
            for name, (write, how) in group.items():
                path = write()
                code, rss, wall, line = measure([sys.executable, "-m", "mmcore", "check-image", str(path), "--json"])
                verdict = json.loads(line) if line.startswith("{") else {"accepted": False, "reason": line}
                assert verdict["accepted"] == accepted and (code == 0) == accepted, (name, code, line)
                rows.append((name, path.stat().st_size, rss, wall, verdict, how))
                print(f"{name}: {rss:.0f} MB, {wall:.2f} s, accepted {verdict['accepted']}", flush=True)
    worst = max(r[2] for r in rows if r[4]["accepted"])
    lines = [
        "# Intake memory: peak RSS of `check-image` on the worst accepted uploads",
        "",
        "Command: `python bench/intake_memory.py` "
        f"({time.perf_counter() - started:.0f} s); each row is `python -m mmcore check-image FILE --json` in a fresh "
        "process, its peak RSS read with `resource.getrusage(RUSAGE_CHILDREN)` in a wrapper process.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.platform()}, Pillow "
        f"{Image.__version__}. Load average after: {[round(x, 2) for x in os.getloadavg()]}: times are noisy here, "
        "RSS is not.",
        "",
        f"Upload cap: `intake.upload_max_pixels` = {cap / 1e6:.0f} megapixels (the importer keeps "
        f"`intake.max_pixels` = {load_config().intake.max_pixels / 1e6:.0f}); a progressive JPEG may use 8 bytes per "
        "pixel of the cap. Baseline (python + Pillow + pillow-heif, a text file refused): "
        f"**{base_rss:.0f} MB**, {base_wall:.2f} s.",
        "",
        "| upload | file | accepted | peak RSS | time | what the intake does |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, rss, wall, verdict, how in rows:
        shown = "yes" if verdict["accepted"] else "no: " + verdict["reason"].split(";")[0]
        lines.append(f"| {name} | {size / 1e6:.2f} MB | {shown} | **{rss:.0f} MB** | {wall:.2f} s | {how} |")
    lines += [
        "",
        f"Bar: at most {BAR_MB} MB on any accepted upload: the worst is {worst:.0f} MB, "
        f"{'meets it' if worst <= BAR_MB else 'MISSES it'}. Before the fix (`main` at f68ff33, the same command on "
        "this machine) all of these were accepted: the 49-megapixel PNG at 902 MB and 3.9 s, the 16-bit one at "
        "1,285 MB and 8.4 s, a 49-megapixel progressive JPEG at 903 MB, the 25-megapixel HEIC at 475 MB.",
        "",
        "The Diagnose page decodes a JPEG at reduced DCT scale (`min_side`), so its uploads cost less than these "
        f"full-size decodes; at most {MAX_CONCURRENT_DECODES} decodes run at once in a process "
        "(`mmcore.images.MAX_CONCURRENT_DECODES`), the others wait.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}; worst accepted {worst:.0f} MB")


if __name__ == "__main__":
    main()
