"""Safe intake of untrusted image bytes: size cap, sniffed format, bomb check, EXIF orientation, pixels-only RGB.

Every image that enters mmderm (upload, importer, SynthDerm) passes through `load_image`. What comes out is a new
RGB image rebuilt from pixels, so no EXIF, GPS, XMP, ICC or comment of the original survives. Memory is bounded: the
pixel cap is checked before anything is decoded, no step keeps more than one extra copy of the picture, and at most
`MAX_CONCURRENT_DECODES` uploads decode at once in a process (bench/results/intake_memory.md); an import bounds its
own decodes by its pool of worker threads instead (`throttled=False`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

try:  # HEIC (iPhone photos); pillow-heif registers an opener with Pillow
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIC_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
    HEIC_SUPPORTED = False

ACCEPTED = ("jpeg", "png", "heic")
DEFAULT_MAX_BYTES = 25_000_000
DEFAULT_MAX_PIXELS = 50_000_000  # the importer's cap (config intake.max_pixels)
# Uploads get a lower cap (config intake.upload_max_pixels): 25 megapixels holds a 24-megapixel phone photo, and the
# worst accepted upload (a progressive CMYK JPEG at the cap) stays under 300 MB of peak RSS in `check-image`.
DEFAULT_UPLOAD_MAX_PIXELS = 25_000_000
MAX_CONCURRENT_DECODES = 2  # each decode may hold ~8 bytes per pixel for a moment; the rest wait their turn
DECODE_WAIT_S = 60.0
_DECODE_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
_BYTES_PER_PIXEL = 8  # what a decode may hold per pixel of the cap: the picture and one converted copy
_STRIP_PIXELS = 1 << 18  # 16-bit rescaling works a strip of a quarter megapixel at a time
_HASH_CHUNK_BYTES = 1 << 18  # the pixel hash reads the picture's bytes a quarter megabyte at a time
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
# PNG text chunks are metadata we drop anyway; Pillow would otherwise inflate up to 64 MB of them.
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, 4 * PngImagePlugin.MAX_TEXT_CHUNK)
# EXIF orientation -> the transpose that makes the picture upright (as PIL.ImageOps.exif_transpose maps them).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_log = logging.getLogger(__name__)


class ImageRejected(ValueError):
    """An image was refused; str(e) is a message a clinician can read."""


class EmptyImage(ImageRejected):
    pass


class ImageTooLarge(ImageRejected):
    pass


class UnsupportedFormat(ImageRejected):
    pass


class CorruptImage(ImageRejected):
    pass


class DecompressionBomb(ImageRejected):
    pass


class IntakeBusy(ImageRejected):
    """Every decode slot stayed taken for DECODE_WAIT_S; the upload may be tried again."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright, pixels only
    format: str  # jpeg | png | heic, as sniffed from the bytes
    sha256: str  # of the decoded pixels: the same picture gives the same id whatever its metadata
    warnings: tuple[str, ...] = ()  # what the intake could not honour, e.g. an unreadable EXIF orientation
    # A JPEG stored as it came, less every metadata segment and any trailing bytes (`jpeg_without_metadata`): the same
    # coefficients, so the same pixels, without re-encoding (5 ms of an import's 14 ms per 600 x 450 picture). None:
    # the picture is stored re-encoded from its pixels.
    stripped_jpeg: bytes | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def sniff_format(data: bytes) -> str | None:
    """The format from the file's first bytes (never from its name), or None when it is none we know."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "heic"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 of the RGB pixels and size: the content address of an image in the case store.

    The same digest as hashing `image.tobytes()`, fed from Pillow's raw encoder a chunk at a time: no full copy of the
    pixels, and a third of the time of cropping strips and copying each (1 ms for a 600 x 450 picture).
    """
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    if not image.width or not image.height:
        return h.hexdigest()  # no pixels: what hashing tobytes() (b"") gives
    encoder = Image._getencoder(image.mode, "raw", image.mode)  # what Image.tobytes uses
    try:
        encoder.setimage(image.im, (0, 0, *image.size))
        while True:
            _, status, data = encoder.encode(max(_HASH_CHUNK_BYTES, 4 * image.width))
            h.update(data)
            if status:
                break
        if status < 0:
            raise RuntimeError(f"raw encoder error {status}")
    finally:
        encoder.cleanup()
    return h.hexdigest()


def load_image(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_UPLOAD_MAX_PIXELS,
    min_side: int | None = None,
    *,
    throttled: bool = True,
) -> DecodedImage:
    """Decode untrusted bytes into a clean upright RGB image, or raise an ImageRejected subclass (nothing else).

    max_pixels: uploads keep the default (intake.upload_max_pixels); the importer passes its own, higher cap.
    min_side: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT, several times faster) as long as both
    sides stay at least this long. The Predictor asks for it; the case store never does, so stored images and
    their hashes are always full size. The hash is of the pixels decoded.
    throttled: wait for one of the process's MAX_CONCURRENT_DECODES slots (uploads). An import passes False: its
    worker threads are its bound, and two slots would idle the rest of its pool.
    """
    if not data:
        raise EmptyImage("The file is empty (0 bytes).")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"The file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    fmt = sniff_format(data)
    if fmt not in ACCEPTED:
        found = f"a {fmt.upper()} file" if fmt else "not an image format we recognise"
        raise UnsupportedFormat(f"This is {found}; please upload a JPEG, PNG or HEIC photo.")
    if fmt == "heic" and not HEIC_SUPPORTED:  # pragma: no cover
        raise UnsupportedFormat("HEIC support (pillow-heif) is not installed; please upload a JPEG or PNG.")
    if throttled and not _DECODE_SLOTS.acquire(timeout=DECODE_WAIT_S):
        raise IntakeBusy("The server is busy reading other photos; please try again in a minute.")
    try:
        img = _decode(data, fmt, max_pixels, min_side)
        try:
            upright, notes = _upright(img)
            as_is = fmt == "jpeg" and upright is img and img.mode == "RGB" and min_side is None and not notes
            clean = _pixels_only(_to_rgb(upright))
            stripped = jpeg_without_metadata(data) if as_is else None
            return DecodedImage(clean, fmt, pixel_sha256(clean), notes, stripped_jpeg=stripped)
        except (ImageRejected, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever a hostile file makes a plugin raise is a damaged file
            raise CorruptImage(f"The {fmt.upper()} file is damaged and cannot be read ({type(e).__name__}).") from None
    finally:
        if throttled:
            _DECODE_SLOTS.release()


def _decode(data: bytes, fmt: str, max_pixels: int, min_side: int | None) -> Image.Image:
    """Open, check the declared size against the cap (header only), then decode; ImageRejected for anything else."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse at our own cap either way.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size  # header only: nothing decoded yet
            if w * h > max_pixels:
                raise DecompressionBomb(
                    f"The image declares {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); the limit is "
                    f"{max_pixels / 1e6:.0f} megapixels."
                )
            if w < 1 or h < 1:
                raise CorruptImage(f"The {fmt.upper()} file declares no pixels ({w} x {h}).")
            if fmt == "jpeg" and _progressive_jpeg_bytes(img) > _BYTES_PER_PIXEL * max_pixels:
                cap = _BYTES_PER_PIXEL * max_pixels * w * h // _progressive_jpeg_bytes(img)
                raise DecompressionBomb(
                    f"This progressive JPEG has {w * h / 1e6:.0f} megapixels; its decoder holds every coefficient, so "
                    f"the limit for it is {cap / 1e6:.0f} megapixels. Please save it smaller or as a baseline JPEG."
                )
            if min_side and fmt == "jpeg":
                img.draft("RGB", (min_side, min_side))  # Pillow keeps both sides >= the size asked for
            img.load()
            return img
        except (ImageRejected, MemoryError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow refuses in Image.open past its own limit, before we see the size; its message has the count.
            found = re.search(r"\((\d+) pixels\)", str(e))
            declared = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise DecompressionBomb(
                f"The image declares {declared}; the limit is {max_pixels / 1e6:.0f} megapixels."
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            raise CorruptImage(
                f"The {fmt.upper()} file is damaged or incomplete and cannot be read ({_one_line(e)})."
            ) from None
        except Exception as e:  # noqa: BLE001 - TypeError, struct.error, IndexError ... from a hostile header
            raise CorruptImage(f"The {fmt.upper()} file is damaged and cannot be read ({type(e).__name__}).") from None


def _one_line(e: Exception, limit: int = 160) -> str:
    """A decoder's message as one short line (libheif's span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _progressive_jpeg_bytes(img: Image.Image) -> int:
    """What decoding a progressive JPEG holds at its peak: the picture (4 bytes a pixel) and, until the last scan,
    every DCT coefficient (2 bytes a pixel per full-resolution component: 3 for 4:4:4, 1.5 for 4:2:0, 4 for CMYK).
    0 for a baseline JPEG, which decodes a row of blocks at a time."""
    layers = getattr(img, "layer", None) or []
    if not img.info.get("progressive") or not layers:
        return 0
    h_max, v_max = max(h for _, h, _, _ in layers), max(v for _, _, v, _ in layers)
    components = sum(h * v for _, h, v, _ in layers) / max(1, h_max * v_max)
    return int(img.width * img.height * (4 + 2 * components))


def _upright(img: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """The picture as the camera meant it (EXIF orientation); an unreadable orientation is skipped with a warning.

    Reads the one tag we need instead of calling ImageOps.exif_transpose, which also rewrites the EXIF and XMP we
    drop anyway, copies the picture when nothing turns, and raised TypeError or struct.error on corrupt EXIF.
    """
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - corrupt EXIF: the pixels are still good
        _log.warning("an image's EXIF orientation could not be read; kept as stored")
        return img, ("The photo's orientation tag could not be read; it is used as stored, without turning it.",)
    method = _UPRIGHT.get(orientation)
    if method is None:
        return img, ()
    turned = img.transpose(method)
    img.close()  # frees the decoded copy: one picture in memory, not two
    return turned, ()


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and 32-bit greyscale rescaled, transparency flattened on white. Closes `img` when
    it makes a new picture, so at most the source and its conversion are in memory at once."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _rescale_to_8bit(img)
        img.close()
        rgb = grey.convert("RGB")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        source = img if img.mode in ("RGBA", "LA") else img.convert("RGBA")
        if source is not img:
            img.close()  # the palette picture is not needed once expanded
        rgb = Image.new("RGB", source.size, (255, 255, 255))
        rgb.paste(source, (0, 0), source)  # alpha over white; the same pixels as Image.alpha_composite
        source.close()
    elif img.mode == "RGB":
        return img
    else:
        rgb = img.convert("RGB")
    img.close()
    return rgb


def _rescale_to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit greyscale copy of a 16- or 32-bit one, a strip at a time: 16-bit is scaled from 0-65535, 32-bit from
    0-65535 when it goes past 255, else kept (a float64 copy of the whole picture cost 8 bytes per pixel)."""
    w, h = img.size
    if img.mode.startswith("I;16"):
        top = 65535.0
    else:
        high = img.getextrema()[1]
        top = 65535.0 if float(high) > 255 else 255.0
    out = np.empty((h, w), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // w)
    for y in range(0, h, rows):
        strip = np.asarray(img.crop((0, y, w, min(h, y + rows))), dtype=np.float32)
        out[y : y + rows] = np.clip(strip * np.float32(255.0 / top) + np.float32(0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _pixels_only(img: Image.Image) -> Image.Image:
    """A plain Image on the same pixel buffer with nothing else: no file, plugin state, info, EXIF, ICC or comment.

    `_new` is how Pillow itself wraps a derived picture; it shares the buffer, where frombytes(tobytes()) made two
    full copies of it.
    """
    clean = img._new(img.im)
    clean.info = {}
    return clean


_JFIF = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"  # version 1.1, no thumbnail
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data: not a stuffed byte, RST or fill
# What decoding needs: SOF0-15 (less DHT, JPG, DAC), DHT, DAC, DQT, DRI, DNL, SOS. Anything else keeps the re-encode.
_KEPT = {*range(0xC0, 0xD0), 0xDB, 0xDD, 0xDC, 0xDA} - {0xC8}


def jpeg_without_metadata(data: bytes) -> bytes | None:
    """The JPEG's bytes with every APPn and COM segment (EXIF, GPS, XMP, ICC, thumbnails, comments) and anything after
    EOI dropped; a bare JFIF header replaces the original's, so a decoder reads the colours as before. None when the
    file holds something this does not recognise, or an Adobe segment (it decides the colour transform): store it
    re-encoded. Only for bytes that `load_image` decoded; the scan data is copied, never interpreted.
    """
    if data[:2] != b"\xff\xd8":
        return None
    out, pos, jfif = [b"\xff\xd8"], 2, False
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return None
        while pos + 2 < len(data) and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI: what follows it (an appended archive, say) is dropped
            out.append(b"\xff\xd9")
            head = _JFIF if jfif else b""
            return out[0] + head + b"".join(out[1:])
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 > len(data) or end > len(data):
            return None
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            if marker == 0xEE and data[pos + 4 : pos + 9] == b"Adobe":
                return None
            jfif = jfif or (marker == 0xE0 and data[pos + 4 : pos + 9] == b"JFIF\x00")
        elif marker in _KEPT:
            if marker == 0xDA:  # a scan: its header, then entropy-coded data up to the next real marker
                found = _NEXT_MARKER.search(data, end)
                if found is None:
                    return None
                end = found.start()
            out.append(data[pos:end])
        else:
            return None
        pos = end
    return None


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Bytes to store: PNG stays lossless, JPEG and HEIC sources become JPEG quality 95 without metadata."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1)  # lossless either way; level 1 is ~5x faster
    else:
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()
