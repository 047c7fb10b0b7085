"""Inputs the page tests upload and type."""

from __future__ import annotations


def lesion_png(index: int = 3, seed: int = 11, size: int = 64) -> bytes:
    """A SynthDerm lesion photo as PNG bytes, as a clinician would upload it."""
    import io

    from mmcore.synthderm import generate_one

    buf = io.BytesIO()
    generate_one(index, seed=seed, size=size).image.save(buf, format="PNG")
    return buf.getvalue()


NOTE = "63-year-old man, lesion on the upper back for about a year, recently darker and larger, no bleeding."
