"""SynthDerm's cases: case `index` of dataset `seed` assembled from its lesion, scene and view, with the findings
drawn, and whole datasets generated into the case store."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mmcore.cases import DOMAINS, Case, CaseStore, normalise_site
from mmcore.findings import COLOURS, FEATURES, STRUCTURES
from mmcore.synthderm.canvas import Canvas
from mmcore.synthderm.classes import render_scene
from mmcore.synthderm.priors import REPEAT_RATE, Lesion, sample_lesion
from mmcore.synthderm.views import apply_view

SOURCE = "synthderm"


@dataclass
class SynthCase:
    """One generated case: the Case (findings, history in extra), the RGB image and the lesion mask (H, W)."""

    case: Case
    image: Image.Image
    mask: np.ndarray
    index: int
    drawn: dict[str, int] = field(default_factory=dict)  # structure or feature -> pixels drawn


def case_id_for(seed: int, index: int) -> str:
    """The stable case id of one generated case: synthderm:s{seed}:{index:06d}."""
    return f"{SOURCE}:s{seed}:{index:06d}"


def generate(
    n: int,
    seed: int = 0,
    domains: Sequence[str] = DOMAINS,
    balanced: bool = False,
    size: int = 224,
    start: int = 0,
    lesion: bool = True,
) -> Iterator[SynthCase]:
    """Cases start..start+n-1; each is the same as generate_one(index, ...) alone."""
    for index in range(start, start + n):
        yield generate_one(index, seed, domains, balanced, size, lesion)


def generate_one(
    index: int,
    seed: int = 0,
    domains: Sequence[str] = DOMAINS,
    balanced: bool = False,
    size: int = 224,
    lesion: bool = True,
) -> SynthCase:
    """Case `index` of the dataset `seed`: byte-identical whenever it is asked for again.

    lesion=False photographs the same scene without its lesion: the same skin, hair, light, framing, blur and
    compression in the same domain, an all-zero mask and no findings; the case keeps its metadata (dx included) and
    says extra["lesion"] = False. A model should not be confident on it (a shortcut check).
    """
    domains = tuple(domains)
    unknown = set(domains) - set(DOMAINS)
    if not domains or unknown:
        raise ValueError(f"domains must be a non-empty subset of {', '.join(DOMAINS)}; got {', '.join(domains)}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    root = _root_of(seed, index)
    spec = sample_lesion(np.random.default_rng([seed, root, 1]), domains, balanced)
    canvas = render_scene(spec, size, np.random.default_rng([seed, root, 2]), with_lesion=lesion)
    image, mask = apply_view(canvas, spec, np.random.default_rng([seed, index, 3]), repeat=root != index)
    findings = _findings(canvas, spec)
    drawn = {k: int(v) for k, v in sorted(canvas.drawn.items())}
    extra = {"variant": spec.variant, "history": spec.history, "synth_seed": seed, "synth_index": index}
    if not lesion:  # the view still framed the lesion's place (a re-take zooms on it); nothing of it is in the image
        mask, findings, drawn, extra["lesion"] = np.zeros_like(mask), {}, {}, False
    site, _ = normalise_site(spec.site_detail)
    case = Case(
        case_id=case_id_for(seed, index),
        source=SOURCE,
        dx=spec.dx,
        lesion_id=f"s{seed}-L{root:06d}",
        patient_id=f"s{seed}-P{root:06d}",
        age=spec.age,
        sex=spec.sex,
        site=site,
        site_detail=spec.site_detail,
        fitzpatrick=spec.fitzpatrick,
        dx_type=spec.dx_type,
        domain=spec.domain,
        findings=findings,
        extra=extra,
    )
    return SynthCase(case=case, image=image, mask=mask, index=index, drawn=drawn)


@dataclass
class SynthResult:
    """What generate_into stored: counts by class and domain, and the source's splits afterwards."""

    generated: int
    stored: int
    by_dx: dict[str, int]
    by_domain: dict[str, int]
    splits: dict[str, int]
    seconds: float


def generate_into(
    store: CaseStore,
    n: int,
    seed: int = 0,
    domains: Sequence[str] = DOMAINS,
    size: int = 224,
    balanced: bool = False,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Generate cases 0..n-1 of dataset `seed` with masks and a note of every strategy into `store`, in batches.

    Idempotent: a case already stored is updated in place. ValueError for an impossible request.
    progress(done, total) is called after every stored batch.
    """
    from mmcore.images import DecodedImage, pixel_sha256
    from mmcore.notes import strategy_names, write_note

    domains = tuple(domains)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not domains or set(domains) - set(DOMAINS):
        raise ValueError(f"domains must be a non-empty subset of {', '.join(DOMAINS)}, got {', '.join(domains)}")
    if not 32 <= size <= 2048:
        raise ValueError(f"size must be between 32 and 2048 pixels, got {size}")
    started = time.perf_counter()
    by_dx: Counter = Counter()
    by_domain: Counter = Counter()
    stored = 0
    strategies = strategy_names()
    batch: list[Case] = []
    for i, sc in enumerate(generate(n, seed, domains, balanced, size)):
        sha, rel = store.put_image(DecodedImage(sc.image, "png", pixel_sha256(sc.image)))
        case = sc.case
        case.image_sha256, case.image_path, case.mask_path = sha, rel, store.put_mask(sc.mask, sha)
        case.notes = {s: write_note(s, case, seed=seed) for s in strategies}
        batch.append(case)
        by_dx[case.dx] += 1
        by_domain[case.domain] += 1
        if len(batch) == 200 or i == n - 1:
            result = store.upsert(batch)
            stored += result.inserted + result.updated + result.unchanged
            batch = []
            if progress is not None:
                progress(i + 1, n)
    splits = store.resplit(SOURCE, split_fractions)
    return SynthResult(
        generated=n,
        stored=stored,
        by_dx=dict(sorted(by_dx.items())),
        by_domain=dict(sorted(by_domain.items())),
        splits=dict(sorted(splits.items())),
        seconds=round(time.perf_counter() - started, 2),
    )


def _root_of(seed: int, index: int) -> int:
    """The first index of this image's lesion: a lesion has at most 3 views, in consecutive indices."""
    start = index
    while start > 0 and np.random.default_rng([seed, start, 0]).random() < REPEAT_RATE:
        start -= 1
    return start + 3 * ((index - start) // 3)


def _findings(c: Canvas, lesion: Lesion) -> dict:
    """What was drawn, in the fixed vocabulary: colours and structures that cover enough pixels to be seen.

    What was drawn into the scene, not what survives the camera: in clinical and atlas views small structures may be
    blurred beyond recognition, as in real photographs.
    """
    colour_min = max(6.0, 0.004 * c.area)
    findings = {
        "asymmetry": lesion.asymmetry,
        "border": lesion.border,
        "colours": [k for k in COLOURS if c.coverage[k] >= colour_min],
        "structures": [s for s in STRUCTURES if c.drawn[s] >= 3],
        "features": [f for f in FEATURES if c.drawn[f] >= 3],
        "diameter_mm": lesion.diameter_mm,
    }
    if "pigment network" in findings["structures"]:
        findings["network"] = c.network
    findings["ulceration"] = "ulceration" in findings["features"]
    return findings
