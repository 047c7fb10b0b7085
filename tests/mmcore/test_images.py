"""Image intake: every untrusted file is accepted upright and clean, or refused with a specific message."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mmcore.cases import CaseStore
from mmcore.images import (
    CorruptImage,
    DecompressionBomb,
    EmptyImage,
    ImageTooLarge,
    UnsupportedFormat,
    jpeg_without_metadata,
    load_image,
    pixel_sha256,
    sniff_format,
)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but carries almost no data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


def test_zero_bytes_is_refused():
    with pytest.raises(EmptyImage, match="empty"):
        load_image(b"")


def test_byte_cap():
    data = _save(_gradient(), "PNG")
    with pytest.raises(ImageTooLarge, match="limit"):
        load_image(data, max_bytes=len(data) - 1)


def test_truncated_jpeg_is_refused():
    data = _save(_gradient(256, 256), "JPEG", quality=90)
    with pytest.raises(CorruptImage, match="damaged or incomplete"):
        load_image(data[: len(data) // 2])


def test_png_declaring_100_megapixels_is_refused_before_decoding():
    data = _png_declaring(10_000, 10_000)
    assert len(data) < 2_000
    with pytest.raises(DecompressionBomb, match="100 megapixels"):
        load_image(data)


def test_gif_named_png_is_refused_by_content():
    gif = _save(_gradient(), "GIF")
    assert sniff_format(gif) == "gif"
    with pytest.raises(UnsupportedFormat, match="GIF"):
        load_image(gif)


def test_random_bytes_are_refused():
    with pytest.raises(UnsupportedFormat, match="JPEG, PNG or HEIC"):
        load_image(b"%PDF-1.7 not an image at all")


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    decoded = load_image(_save(cmyk, "JPEG", quality=95))
    assert decoded.image.mode == "RGB" and decoded.size == (40, 30)
    r, g, b = decoded.image.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_rescaled_not_clipped():
    arr = np.full((20, 30), 32768, dtype=np.uint16)  # mid-grey at 16 bits
    data = _save(Image.fromarray(arr), "PNG")
    decoded = load_image(data)
    assert decoded.format == "png" and decoded.image.mode == "RGB"
    assert decoded.image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1"])
def test_any_mode_becomes_rgb(mode):
    img = _gradient().convert(mode)
    decoded = load_image(_save(img, "PNG"))
    assert decoded.image.mode == "RGB" and decoded.size == img.size


def test_transparency_is_flattened_on_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert load_image(_save(img, "PNG")).image.getpixel((5, 5)) == (255, 255, 255)


def test_exif_rotated_jpeg_is_stored_upright(tmp_path):
    # A landscape picture with a red band at the top, saved as the camera would with orientation 6 ("rotate 90 CW").
    arr = np.full((40, 80, 3), 200, dtype=np.uint8)
    arr[:8] = (255, 0, 0)
    raw = Image.fromarray(arr)
    exif = raw.getexif()
    exif[0x0112] = 6
    data = _save(raw, "JPEG", quality=95, exif=exif.tobytes())

    decoded = load_image(data)
    assert decoded.size == (40, 80)  # portrait now
    # after a 90 degree clockwise turn the top band is on the right edge
    right = np.asarray(decoded.image)[:, -4:].reshape(-1, 3).mean(0)
    left = np.asarray(decoded.image)[:, :4].reshape(-1, 3).mean(0)
    assert right[0] > 200 and right[1] < 80 and left[1] > 150

    store = CaseStore(tmp_path)
    _, rel = store.put_image(decoded)
    with Image.open(tmp_path / rel) as stored:
        assert stored.size == (40, 80)
        assert stored.getexif().get(0x0112) is None


def test_comment_gps_and_exif_do_not_survive(tmp_path):
    img = _gradient()
    exif = img.getexif()
    exif[0x010E] = "Jane Doe, DOB 1961-02-03"  # ImageDescription
    exif[0x8825] = {2: (51.0, 30.0, 0.0), 1: "N"}  # GPS IFD
    data = _save(img, "JPEG", quality=95, exif=exif.tobytes(), comment=b"Patient: Jane Doe")
    assert b"Jane Doe" in data

    decoded = load_image(data)
    assert not decoded.image.info and not decoded.image.getexif()
    store = CaseStore(tmp_path)
    _, rel = store.put_image(decoded)
    stored = (tmp_path / rel).read_bytes()
    assert b"Jane Doe" not in stored and b"Exif" not in stored and b"GPS" not in stored
    with Image.open(tmp_path / rel) as reopened:
        assert "comment" not in reopened.info and "exif" not in reopened.info


def test_same_pixels_same_id_whatever_the_metadata():
    img = _gradient()
    plain = load_image(_save(img, "PNG"))
    with_text = load_image(_save(img, "PNG", pnginfo=_pnginfo("Author", "Dr X")))
    assert plain.sha256 == with_text.sha256
    other = load_image(_save(_gradient(65, 48), "PNG"))
    assert other.sha256 != plain.sha256


def _pnginfo(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, value)
    return info


def test_heic_round_trip():
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(_gradient()).save(buf, quality=90)
    decoded = load_image(buf.getvalue())
    assert decoded.format == "heic" and decoded.image.mode == "RGB" and decoded.size == (64, 48)


def test_min_side_decodes_a_large_jpeg_smaller_but_never_below_it():
    big = _save(_gradient(1600, 1200), "JPEG", quality=90)
    full = load_image(big)
    reduced = load_image(big, min_side=512)
    assert full.size == (1600, 1200)
    assert reduced.size == (800, 600) and min(reduced.size) >= 512
    small = _save(_gradient(300, 200), "JPEG", quality=90)
    assert load_image(small, min_side=512).size == (300, 200)  # never upscaled, never reduced below
    png = _save(_gradient(1600, 1200), "PNG")
    assert load_image(png, min_side=512).size == (1600, 1200)  # only JPEG has a reduced decode


# ---- issue 13, item 3: uploads that cost gigabytes; item 4: corrupt EXIF ----

_PEAK_RSS = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
print(p.stdout + p.stderr)
"""


def _check_image_peak_mb(path) -> tuple[int, int, str]:
    """(exit code, peak RSS in MB, output) of `python -m mmcore check-image FILE` in a process of its own."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", "mmcore", "check-image", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    head, _, rest = out.partition("\n")
    code, mb = map(int, head.split())
    return code, mb, rest


def test_tiny_files_declaring_gigabytes_are_refused_and_the_largest_accepted_stay_under_300_mb(tmp_path):
    """Before: a 0.10 MB 16-bit 7000 x 7000 PNG was accepted by check-image at a peak of 1,285 MB (bench:
    bench/results/intake_memory.md, which measures every kind of worst upload)."""
    bomb = tmp_path / "bomb16.png"
    Image.fromarray(np.zeros((7000, 7000), dtype=np.uint16)).save(bomb)
    assert bomb.stat().st_size < 200_000
    code, mb, out = _check_image_peak_mb(bomb)
    assert code == 2 and "the limit is 25 megapixels" in out and mb < 100

    side = 5000  # 25 megapixels: the upload cap
    largest = tmp_path / "largest16.png"
    arr = np.zeros((side, side), dtype=np.uint16)
    arr[:, : side // 2] = 40_000
    Image.fromarray(arr).save(largest)
    code, mb, out = _check_image_peak_mb(largest)
    assert code == 0 and f"{side} x {side}" in out
    assert mb <= 300, f"peak RSS {mb} MB"


def test_heic_at_the_upload_cap_stays_under_300_mb():
    pytest.importorskip("pillow_heif")
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "intake" / "flat_5000x5000.heic"
    code, mb, out = _check_image_peak_mb(fixture)
    assert code == 0 and "HEIC 5000 x 5000" in out and mb <= 300, (mb, out)


def test_the_importer_keeps_its_own_higher_cap():
    data = _png_declaring(6000, 6000)  # 36 megapixels: over the upload cap, under the importer's
    with pytest.raises(DecompressionBomb, match="the limit is 25 megapixels"):
        load_image(data)
    with pytest.raises(CorruptImage):  # past the size check: only its missing pixel data stops it
        load_image(data, max_pixels=50_000_000)


def test_a_progressive_jpeg_gets_the_pixels_its_decoder_can_hold():
    """A progressive decoder holds every DCT coefficient (2 bytes a pixel per component) beside the picture."""
    big = _save(Image.new("RGB", (4800, 4800), (150, 90, 60)), "JPEG", progressive=True, subsampling=0)  # 23 MP
    with pytest.raises(DecompressionBomb, match="limit for it is 20 megapixels"):
        load_image(big)
    assert load_image(_save(Image.new("RGB", (4800, 4800), (150, 90, 60)), "JPEG")).size == (4800, 4800)


def test_decoding_keeps_no_extra_full_copy_of_the_pixels():
    """Before: tobytes() for the clean copy and again for the hash: two full copies of the picture as Python bytes."""
    import tracemalloc

    data = _save(_gradient(2000, 1500), "PNG", compress_level=1)
    tracemalloc.start()
    try:
        decoded = load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_copy = 3 * 2000 * 1500
    assert decoded.size == (2000, 1500)
    assert peak < full_copy / 2, f"{peak / 1e6:.1f} MB of Python allocations for a {full_copy / 1e6:.1f} MB picture"


def test_the_pixel_hash_is_unchanged_by_hashing_in_strips():
    import hashlib

    img = _gradient(1500, 900)  # more than one strip
    expected = hashlib.sha256(b"RGB:1500x900:" + img.tobytes()).hexdigest()
    from mmcore.images import pixel_sha256

    assert pixel_sha256(img) == expected


def test_concurrent_decodes_are_bounded(monkeypatch):
    """Before: every upload decoded at once, each holding its picture (8 sessions, 8 decodes)."""
    import threading
    import time

    import mmcore.images as images

    running, peak, guard = [0], [0], threading.Lock()
    real_open = Image.open

    def slow_open(*args, **kwargs):
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    data = _save(_gradient(), "PNG")
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2, f"{peak[0]} decodes at once"
    assert images.MAX_CONCURRENT_DECODES == 2


def test_an_unreadable_exif_orientation_is_skipped_with_a_warning(monkeypatch):
    """Before: exif_transpose raised TypeError or struct.error outside the try block (a traceback in check-image)."""
    import struct

    arr = np.full((40, 80, 3), 200, dtype=np.uint8)
    raw = Image.fromarray(arr)
    exif = raw.getexif()
    exif[0x0112] = 6
    data = _save(raw, "JPEG", quality=95, exif=exif.tobytes())

    def broken(self):
        raise struct.error("unpack requires a buffer of 12 bytes")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    decoded = load_image(data)
    assert decoded.size == (80, 40)  # used as stored, not turned
    assert decoded.warnings and "orientation" in decoded.warnings[0]


# ---- issue 14: a plain JPEG is stored as it came, less its metadata (no re-encode: the same pixels, 5 ms less) ----


@pytest.mark.parametrize("progressive", [False, True])
def test_a_plain_jpeg_is_stored_less_its_metadata_with_its_very_pixels(tmp_path, progressive):
    exif = _gradient().getexif()
    exif[0x010E] = "Jane Doe, DOB 1961-02-03"
    exif[0x8825] = {2: (51.0, 30.0, 0.0), 1: "N"}
    data = _save(
        _gradient(96, 72),
        "JPEG",
        quality=90,
        progressive=progressive,
        exif=exif.tobytes(),
        comment=b"Patient: Jane Doe",
        icc_profile=b"ICC-profile-bytes" * 20,
    )
    data += b"PK\x03\x04 an archive appended after the picture"
    decoded = load_image(data)
    assert decoded.stripped_jpeg is not None
    _, rel = CaseStore(tmp_path).put_image(decoded)
    stored = (tmp_path / rel).read_bytes()
    assert stored == decoded.stripped_jpeg and stored.endswith(b"\xff\xd9")
    for secret in (b"Jane Doe", b"Exif", b"ICC-profile", b"PK\x03\x04"):
        assert secret not in stored
    with Image.open(tmp_path / rel) as reopened:
        assert reopened.info.get("jfif") and "exif" not in reopened.info and "icc_profile" not in reopened.info
        assert pixel_sha256(reopened.convert("RGB")) == decoded.sha256  # the hashed pixels exactly: no re-encode


def test_jpegs_the_strip_cannot_vouch_for_are_re_encoded(tmp_path):
    cmyk = load_image(_save(_gradient().convert("CMYK"), "JPEG"))  # an Adobe segment decides its colours
    turned = _gradient()
    exif = turned.getexif()
    exif[0x0112] = 6
    rotated = load_image(_save(turned, "JPEG", exif=exif.tobytes()))  # its pixels were turned after decoding
    grey = load_image(_save(_gradient().convert("L"), "JPEG"))  # stored as RGB
    for decoded in (cmyk, rotated, grey):
        assert decoded.stripped_jpeg is None
        _, rel = CaseStore(tmp_path).put_image(decoded)
        with Image.open(tmp_path / rel) as stored:
            assert stored.mode == "RGB" and stored.size == decoded.size and "exif" not in stored.info
    jpeg = _save(_gradient(), "JPEG")
    assert jpeg_without_metadata(jpeg) is not None
    for damaged in (b"", jpeg[:2], jpeg[:40], b"\xff\xd8\x00\x00" + jpeg[2:], _save(_gradient(), "PNG")):
        assert jpeg_without_metadata(damaged) is None
    assert load_image(_save(_gradient(), "PNG")).stripped_jpeg is None
