"""The intake under random damage: thousands of byte mutations of small JPEG (with EXIF), PNG and HEIC files either
decode to a clean RGB image or raise the intake's own ImageRejected, never anything else (issue 13, item 4)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmcore.images import ImageRejected, load_image


def _picture() -> Image.Image:
    arr = np.zeros((12, 16, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
    arr[..., 2] = 90
    return Image.fromarray(arr)


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the intake must read it to turn the picture
    exif[0x010E] = "lesion, left forearm"  # ImageDescription
    exif[0x0132] = "2024:01:02 03:04:05"  # DateTime
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # a GPS IFD: nested offsets to break
    return exif.tobytes()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    _picture().save(buf, format="JPEG", quality=50, exif=_exif())
    return buf.getvalue()


def _png() -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "patient J. Doe")
    buf = io.BytesIO()
    _picture().convert("RGBA").save(buf, format="PNG", pnginfo=info, exif=_exif())
    return buf.getvalue()


def _heic() -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(_picture()).save(buf, quality=60)
    return buf.getvalue()


def _exif_span(data: bytes) -> tuple[int, int]:
    """Where the EXIF block sits in the file (after its "Exif\\0\\0" header in a JPEG)."""
    start = data.find(b"Exif\x00\x00") + 6 if b"Exif\x00\x00" in data else data.find(b"eXIf") + 4
    return start, start + len(_exif())


def _mutants(data: bytes, n: int, seed: int, hot: tuple[int, int]) -> list[bytes]:
    """n copies of `data`: half with 1-3 bytes changed inside `hot` (the EXIF block or the container's boxes, where a
    decoder trusts offsets and counts), half with 1-4 random changes, cuts or insertions anywhere past the magic."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = bytearray(data)
        if i % 2:
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(*hot))] = int(rng.integers(256))
        else:
            for _ in range(int(rng.integers(1, 5))):
                pos = int(rng.integers(12, len(b)))  # past the first bytes: the sniffed format stays
                op = rng.integers(3)
                if op == 0:
                    b[pos] = int(rng.integers(256))
                elif op == 1:
                    del b[pos : pos + int(rng.integers(1, 16))]
                else:
                    b[pos:pos] = rng.bytes(int(rng.integers(1, 8)))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize(("make", "n"), [(_jpeg, 3000), (_png, 3000), (_heic, 1500)])
def test_mutated_files_decode_or_are_rejected_never_anything_else(make, n):
    """Before the fix about 1 in 200 JPEGs with a damaged EXIF block raised TypeError or struct.error."""
    data = make()
    hot = _exif_span(data) if make is not _heic else (12, min(len(data), 400))
    assert load_image(data).image.mode == "RGB"
    escaped: dict[str, int] = {}
    decoded = rejected = 0
    for mutant in _mutants(data, n, seed=13, hot=hot):
        try:
            result = load_image(mutant)
        except ImageRejected as e:
            assert str(e) and "\n" not in str(e)
            rejected += 1
            continue
        except Exception as e:  # noqa: BLE001 - what this test counts
            escaped[type(e).__name__] = escaped.get(type(e).__name__, 0) + 1
            continue
        assert result.image.mode == "RGB" and not result.image.info
        decoded += 1
    assert escaped == {}, f"{sum(escaped.values())} of {n} mutants raised {escaped}"
    assert decoded and rejected  # the mutations exercised both ends
