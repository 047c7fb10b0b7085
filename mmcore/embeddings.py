"""Every case embedded by one model version for the case index: by its image, and by its best available note in the
order of preference the config names. Streamed and resumable: images decode in worker threads a batch ahead of the
tower, vectors are written CHUNK cases at a time, and only new or changed inputs are embedded, so a crash or cancel
loses at most one chunk. `Eta` words the elapsed and remaining time every progress message carries (CLI and Admin).
"""

from __future__ import annotations

import inspect
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from mmcore.audit import sha256_text
from mmcore.cases import Case, CaseStore
from mmcore.datasets import FeatureCache, image_tower_key, text_tower_key
from mmcore.model import MultimodalModel


class Progress(Protocol):
    """What long steps report to: the fraction of the whole job done and a line saying what is happening, and by
    keyword the current stage ("embedding images", "embedding notes", "indexing") with its own counts, so that a
    page can draw the stage's counts and estimate the time left (`time_left`) without parsing the line."""

    def __call__(
        self, fraction: float, text: str, *, stage: str = "", done: int | None = None, total: int | None = None
    ) -> None: ...


CHUNK = 256  # cases embedded and written per batch
# Milliseconds one item of each kind of work took in bench/scale.py on 2 CPU cores at 10,015 cases: an image read,
# decoded and embedded at 32/s, a note at 829/s, an image's or a note's features from the cache at 3,600/s or more, a
# vector indexed at 2,410/s. Only their ratios matter: they share a long step's progress fraction among its parts, so
# that the time left computed from that fraction holds when a slow part (images) precedes fast ones (notes, the index).
# Equal shares per item made a 10,015-case promotion's bar say "about 10:01 left" when 4:18 to 4:36 were.
ITEM_MS = {"image": 31.0, "text": 1.2, "cached": 0.3, "vector": 0.4}


@dataclass(frozen=True)
class EmbedReport:
    """What the case store holds for a version after embedding, against the store's total."""

    cases: int  # in the case store
    image: int  # cases with an image vector
    text: int  # cases with a note vector
    embedded: dict[str, int]  # vectors computed by this call, per modality (0: all were up to date)
    without_note: int  # cases no note of any preferred strategy describes
    without_image: int
    notes_by_strategy: dict[str, int]  # which strategy each indexed note came from
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each modality's embedding


@dataclass
class Eta:
    """Elapsed and remaining time of one step, the remaining time from the step's rate so far."""

    total: int
    started: float = field(default_factory=time.monotonic)

    def __call__(self, done: int) -> str:
        """ "1:05 elapsed, about 2:10 left" (no estimate before the first item is done, nor after the last)."""
        return time_left(time.monotonic() - self.started, done / self.total if self.total else 1.0, at_least=0.0)


def with_counts(progress: Callable[..., None] | None) -> Progress | None:
    """`progress` as a Progress: a plain (fraction, text) callback, as older callers pass, gets the line alone (the
    counts are in it too); one that takes the stage and its counts by keyword gets them."""
    if progress is None:
        return None
    try:
        params = inspect.signature(progress).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: call it as documented
        return progress
    if any(p.kind is p.VAR_KEYWORD for p in params) or {"stage", "done", "total"} <= {p.name for p in params}:
        return progress
    return lambda fraction, text, **counts: progress(fraction, text)


def time_left(elapsed: float, fraction: float, at_least: float = 0.02) -> str:
    """ "0:42 elapsed, about 1:12 left": the time left of a job `fraction` done after `elapsed` seconds, at its rate
    so far; no estimate while less than `at_least` is done (noise) nor once it is all done."""
    text = f"{clock(elapsed)} elapsed"
    if fraction > 0 and at_least <= fraction < 1.0:
        text += f", about {clock(elapsed * (1.0 - fraction) / fraction)} left"
    return text


def clock(seconds: float) -> str:
    """A duration as m:ss, or h:mm:ss from an hour on."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def best_note(case: Case, preference: Sequence[str]) -> tuple[str, str] | None:
    """(strategy, text) of the case's first note in `preference` order; None when it has none of them."""
    for strategy in preference:
        text = (case.notes.get(strategy) or "").strip()
        if text:
            return strategy, text
    return None


@dataclass(frozen=True)
class EmbedPlan:
    """What embedding a version's cases will do: every case, its best note, the inputs each collection should hold,
    those still to embed (new or changed), and which of those the feature cache already has (`cached`)."""

    cases: list[Case]
    notes: dict[str, tuple[str, str] | None]  # case id -> (strategy, text) of its best note
    wanted: dict[str, dict[str, str]]  # modality -> case id -> the input's hash
    todo: dict[str, list[Case]]  # modality -> the cases to embed
    cached: frozenset[tuple[str, str]]  # (modality, case id) whose features are in the cache

    def item_ms(self, modality: str, case: Case) -> float:
        """The estimated cost of embedding one case (ITEM_MS)."""
        return ITEM_MS["cached" if (modality, case.case_id) in self.cached else modality]

    @property
    def embed_ms(self) -> float:
        return sum(self.item_ms(m, c) for m, cases in self.todo.items() for c in cases)

    @property
    def index_ms(self) -> float:
        """The estimated cost of indexing every vector this version will hold."""
        return ITEM_MS["vector"] * sum(len(v) for v in self.wanted.values())


def plan_embedding(
    model: MultimodalModel,
    store: CaseStore,
    version: str,
    preference: Sequence[str],
    *,
    cache_dir: Path | None = None,
    force: bool = False,
) -> EmbedPlan:
    """Look before embedding: what `embed_cases` will do. Drops the stored vectors of notes deleted since."""
    cases = store.cases(with_notes=True)
    notes = {c.case_id: best_note(c, preference) for c in cases}
    wanted = {
        "image": {c.case_id: c.image_sha256 for c in cases if c.image_path},
        "text": {cid: sha256_text(n[1]) for cid, n in notes.items() if n is not None},
    }
    todo: dict[str, list[Case]] = {}
    for modality, inputs in wanted.items():
        stored = store.embedded_inputs(version, modality)
        stale = [cid for cid in stored if cid not in inputs]  # a note deleted since: out of the text collection
        if stale:
            store.delete_embeddings(version, modality, stale)
        changed = {cid for cid, h in inputs.items() if force or stored.get(cid) != h}
        todo[modality] = [c for c in cases if c.case_id in changed]
    todo["text"].sort(key=lambda c: len(notes[c.case_id][1]))  # similar lengths share a batch: less padding
    cached: set[tuple[str, str]] = set()
    if cache_dir is not None:  # a stat per input: 10,015 images and notes in well under a second
        for modality, key in (("image", image_tower_key(model)), ("text", text_tower_key(model))):
            cache = FeatureCache(cache_dir / "features", key)
            cached |= {(modality, c.case_id) for c in todo[modality] if cache.has(wanted[modality][c.case_id])}
    return EmbedPlan(cases, notes, wanted, todo, frozenset(cached))


def embed_cases(
    model: MultimodalModel,
    store: CaseStore,
    version: str,
    preference: Sequence[str],
    *,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    force: bool = False,
    progress: Progress | Callable[[float, str], None] | None = None,
    modalities: Sequence[str] = ("image", "text"),
    plan: EmbedPlan | None = None,
) -> EmbedReport:
    """Embed every case of `store` with `model` into the store's embeddings of `version` (image and best note).

    cache_dir: the encoder feature cache, for towers that are frozen pretrained ones (features computed once).
    num_workers: threads decoding images (0: one per core, at most 4); the tower runs in this thread meanwhile.
    force: embed everything again, even inputs whose vectors are stored.
    modalities: which to embed now (the notes alone after new notes were generated, say); the others are left as stored.
    plan: what `plan_embedding` found to do, when the caller looked first (to apportion its own progress bar).
    The fraction `progress` gets is of the estimated time (ITEM_MS per item), the counts it gets are exact.
    """
    progress = with_counts(progress)
    model.eval()
    device = next(model.parameters()).device
    plan = plan or plan_embedding(model, store, version, preference, cache_dir=cache_dir, force=force)
    todo = {m: plan.todo[m] if m in modalities else [] for m in plan.todo}
    notes, wanted, cost = plan.notes, plan.wanted, plan.item_ms
    total, work = sum(len(v) for v in todo.values()), sum(cost(m, c) for m, cases in todo.items() for c in cases)
    done, work_done, seconds = 0, 0.0, {}
    image_cache = FeatureCache(cache_dir / "features", image_tower_key(model)) if cache_dir else None
    text_cache = FeatureCache(cache_dir / "features", text_tower_key(model)) if cache_dir else None
    threads = num_workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="mmderm-decode") as pool:
        streams = {
            "image": _image_chunks(model, store, todo["image"], device, batch_size, image_cache, pool),
            "text": _text_chunks(model, todo["text"], notes, device, batch_size, text_cache),
        }
        for modality, stream in streams.items():
            started, eta, step = time.perf_counter(), Eta(len(todo[modality])), 0  # images and notes differ in rate
            for chunk, feats in stream:
                with torch.inference_mode():
                    out = model.forward_features(**{f"{modality}_features": feats.to(device)})
                    vectors = out.image_embeds if modality == "image" else out.text_embeds  # (B, D)
                ids = [c.case_id for c in chunk]
                store.put_embeddings(
                    version, modality, ids, vectors.float().cpu().numpy(), [wanted[modality][i] for i in ids]
                )
                done, step = done + len(chunk), step + len(chunk)
                work_done += sum(cost(modality, c) for c in chunk)
                if progress is not None:
                    stage, n = f"embedding {'images' if modality == 'image' else 'notes'}", len(todo[modality])
                    fraction = 1.0 if done == total else work_done / work  # exact at the end, whatever rounding
                    progress(fraction, f"{stage}: {step:,} of {n:,} · {eta(step)}", stage=stage, done=step, total=n)
            seconds[modality] = round(time.perf_counter() - started, 2)
    return EmbedReport(
        cases=len(plan.cases),
        image=len(wanted["image"]),
        text=len(wanted["text"]),
        embedded={m: len(v) for m, v in todo.items()},
        without_note=sum(1 for n in notes.values() if n is None),
        without_image=len(plan.cases) - len(wanted["image"]),
        notes_by_strategy=dict(Counter(n[0] for n in notes.values() if n is not None)),
        seconds=seconds,
    )


def _image_chunks(
    model: MultimodalModel,
    store: CaseStore,
    cases: Sequence[Case],
    device: torch.device,
    batch_size: int,
    cache: FeatureCache | None,
    pool: ThreadPoolExecutor,
) -> Iterator[tuple[list[Case], torch.Tensor]]:
    """(chunk, image-tower features (n, F_img)) CHUNK cases at a time: from the feature cache where present, else
    decoded by the pool's threads while the tower runs (two batches ahead, across chunks) and then cached.

    Decoding overlaps the forward instead of preceding it; what the frozen-feature pass of training
    (datasets.image_features) could do too. Never more than two batches of decoded pictures in memory.
    """
    if not cases:
        return
    dim = model.image_encoder.feature_dim
    # channels_last as datasets.image_features has it, converted outside inference mode (it would otherwise turn the
    # model's own weights into inference tensors and break a later Grad-CAM on this model).
    with torch.inference_mode(False):
        tower = model.image_encoder.eval().to(memory_format=torch.channels_last)
    transform = model.image_transform(train=False)

    def load(case: Case) -> torch.Tensor:
        with Image.open(store.home / case.image_path) as img:
            return transform(img.convert("RGB"))  # (3, S, S)

    def look_up(case: Case) -> torch.Tensor | Future:
        vector = cache.get(case.image_sha256) if cache is not None else None
        if vector is not None and vector.shape == (dim,):
            return torch.from_numpy(vector)
        return pool.submit(load, case)

    def run(batch: list[tuple[int, Case, Future]], feats: torch.Tensor) -> None:
        images = torch.stack([f.result() for _, _, f in batch]).to(device)  # (b, 3, S, S)
        with torch.inference_mode():
            out = tower(images.contiguous(memory_format=torch.channels_last)).float().cpu()  # (b, F_img)
        for (i, case, _), f in zip(batch, out, strict=True):
            feats[i] = f
            if cache is not None:
                cache.put(case.image_sha256, f.numpy())

    source, ahead = iter(cases), deque()
    for start in range(0, len(cases), CHUNK):
        n = min(CHUNK, len(cases) - start)
        chunk, feats, batch = [], torch.empty(n, dim), []
        for i in range(n):
            while len(ahead) <= 2 * batch_size and (case := next(source, None)) is not None:
                ahead.append((case, look_up(case)))
            case, item = ahead.popleft()
            chunk.append(case)
            if isinstance(item, torch.Tensor):
                feats[i] = item
            else:
                batch.append((i, case, item))
            if batch and (len(batch) == batch_size or i == n - 1):
                run(batch, feats)
                batch = []
        yield chunk, feats


def _text_chunks(
    model: MultimodalModel,
    cases: Sequence[Case],
    notes: dict[str, tuple[str, str] | None],
    device: torch.device,
    batch_size: int,
    cache: FeatureCache | None,
) -> Iterator[tuple[list[Case], torch.Tensor]]:
    """(chunk, pooled text-tower features (n, F_txt)) of the cases' best notes, CHUNK cases at a time; equal notes
    are encoded once per chunk, cached ones not at all (keys as datasets.text_features has them)."""
    dim = model.text_encoder.feature_dim
    tower = model.text_encoder.eval()
    for start in range(0, len(cases), CHUNK):
        chunk = list(cases[start : start + CHUNK])
        feats = torch.empty(len(chunk), dim)
        missing: dict[str, list[int]] = {}  # text -> positions
        for i, case in enumerate(chunk):
            text = notes[case.case_id][1]
            vector = cache.get(sha256_text(text)) if cache is not None and text not in missing else None
            if vector is not None and vector.shape == (dim,):
                feats[i] = torch.from_numpy(vector)
            else:
                missing.setdefault(text, []).append(i)
        texts = list(missing)
        for b in range(0, len(texts), batch_size):
            batch = texts[b : b + batch_size]
            tokens = {k: v.to(device) for k, v in model.tokenize(batch).items()}
            with torch.inference_mode():
                out = tower(tokens["input_ids"], tokens["attention_mask"]).pooled.float().cpu()  # (b, F_txt)
            for text, f in zip(batch, out, strict=True):
                feats[missing[text]] = f
                if cache is not None:
                    cache.put(sha256_text(text), f.numpy())
        yield chunk, feats
