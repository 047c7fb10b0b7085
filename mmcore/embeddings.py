"""Every case embedded by one model version for the case index: by its image, and by its best available note in the
order of preference the config names. Resumable: only new or changed inputs are embedded, in batches written as
they finish, so a crash or cancel loses at most one batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmcore.audit import sha256_text
from mmcore.cases import Case, CaseStore
from mmcore.datasets import FeatureCache, image_features, image_tower_key, text_features, text_tower_key
from mmcore.model import MultimodalModel

Progress = Callable[[float, str], None]  # (fraction done, what is happening)
CHUNK = 256  # cases embedded and written per batch


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


def best_note(case: Case, preference: Sequence[str]) -> tuple[str, str] | None:
    """(strategy, text) of the case's first note in `preference` order; None when it has none of them."""
    for strategy in preference:
        text = (case.notes.get(strategy) or "").strip()
        if text:
            return strategy, text
    return None


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
    progress: Progress | None = None,
) -> EmbedReport:
    """Embed every case of `store` with `model` into the store's embeddings of `version` (image and best note).

    cache_dir: the encoder feature cache, for towers that are frozen pretrained ones (features computed once).
    force: embed everything again, even inputs whose vectors are stored.
    """
    model.eval()
    device = next(model.parameters()).device
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
        todo[modality] = [
            c for c in cases if c.case_id in inputs and (force or stored.get(c.case_id) != inputs[c.case_id])
        ]
    total = max(1, sum(len(v) for v in todo.values()))
    done = 0
    image_cache = FeatureCache(cache_dir / "features", image_tower_key(model)) if cache_dir else None
    text_cache = FeatureCache(cache_dir / "features", text_tower_key(model)) if cache_dir else None
    for modality, pending in todo.items():
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            with torch.inference_mode():
                if modality == "image":
                    feats = image_features(model, store, chunk, device, batch_size, image_cache, num_workers)
                    vectors = model.forward_features(image_features=feats.to(device)).image_embeds  # (B, D)
                else:
                    texts = [notes[c.case_id][1] for c in chunk]
                    feats = text_features(model, texts, device, batch_size, text_cache)
                    vectors = model.forward_features(text_features=feats.to(device)).text_embeds  # (B, D)
            ids = [c.case_id for c in chunk]
            store.put_embeddings(
                version, modality, ids, vectors.float().cpu().numpy(), [wanted[modality][i] for i in ids]
            )
            done += len(chunk)
            if progress is not None:
                progress(done / total, f"embedded {done:,} of {total:,} inputs ({modality})")
    return EmbedReport(
        cases=len(cases),
        image=len(wanted["image"]),
        text=len(wanted["text"]),
        embedded={m: len(v) for m, v in todo.items()},
        without_note=sum(1 for n in notes.values() if n is None),
        without_image=len(cases) - len(wanted["image"]),
        notes_by_strategy=dict(Counter(n[0] for n in notes.values() if n is not None)),
    )
