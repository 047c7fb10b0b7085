"""Safe intake of untrusted image bytes: size cap, sniffed format, bomb check, EXIF orientation, pixels-only RGB.

Every image that enters mmderm (upload, importer, SynthDerm) passes through `load_image`. What comes out is a new
RGB image rebuilt from pixels, so no EXIF, GPS, XMP, ICC or comment of the original survives.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC (iPhone photos); pillow-heif registers an opener with Pillow
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIC_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
    HEIC_SUPPORTED = False

ACCEPTED = ("jpeg", "png", "heic")
DEFAULT_MAX_BYTES = 25_000_000
DEFAULT_MAX_PIXELS = 50_000_000
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


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


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright, pixels only
    format: str  # jpeg | png | heic, as sniffed from the bytes
    sha256: str  # of the decoded pixels: the same picture gives the same id whatever its metadata

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
    """SHA-256 of the RGB pixels and size: the content address of an image in the case store."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def load_image(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> DecodedImage:
    """Decode untrusted bytes into a clean upright RGB image, or raise an ImageRejected subclass.

    min_side: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT, several times faster) as long as both
    sides stay at least this long. The Predictor asks for it; the case store never does, so stored images and
    their hashes are always full size. The hash is of the pixels decoded.
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
            if min_side and fmt == "jpeg":
                img.draft("RGB", (min_side, min_side))  # Pillow keeps both sides >= the size asked for
            img.load()
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow refuses in Image.open past its own limit, before we see the size; its message has the count.
            found = re.search(r"\((\d+) pixels\)", str(e))
            declared = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise DecompressionBomb(
                f"The image declares {declared}; the limit is {max_pixels / 1e6:.0f} megapixels."
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            raise CorruptImage(f"The {fmt.upper()} file is damaged or incomplete and cannot be read ({e}).") from None

    img = ImageOps.exif_transpose(img)  # store upright, as the camera meant it
    rgb = _to_rgb(img)
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())  # pixels only: no EXIF, GPS, XMP, ICC, comment
    return DecodedImage(image=clean, format=fmt, sha256=pixel_sha256(clean))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and 32-bit greyscale rescaled, transparency flattened on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Bytes to store: PNG stays lossless, JPEG and HEIC sources become JPEG quality 95 without metadata."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1)  # lossless either way; level 1 is ~5x faster
    else:
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()
