"""The trunk-activation cache of partial fine-tuning: what a frozen trunk gives for each training image, computed once
for a clean view and several augmented views (so augmentation survives the cache), for the same photo with its lesion
removed (outlier exposure), and for each note; and the feature cache of the trained towers filled from it (so
evaluation and promotion need not run the trunks again).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from mmcore.audit import sha256_text
from mmcore.cases import Case, CaseStore
from mmcore.datasets import (
    CaseSet,
    FeatureCache,
    image_loader,
    image_tower_key,
    pad_states,
    text_tower_key,
    tower_key,
)
from mmcore.model import MultimodalModel, PartialModel

ACTIVATIONS = "activations"  # under the cache dir, beside "features"


class ActivationCache:
    """Arrays on disk, one .npy per (input, view): `<root>/<key>/<h[:2]>/<h>-<view>.npy`, written atomically, read
    with allow_pickle=False (several processes may share it), in the dtype given: float32 for clean views, so that
    features computed from them equal the tower's forward; float16 for augmented ones (half the disk; they only
    feed training)."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def _path(self, h: str, view: int | str) -> Path:
        return self.dir / h[:2] / f"{h}-{view}.npy"

    def get(self, h: str, view: int | str = 0) -> np.ndarray | None:
        path = self._path(h, view)
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def put(self, h: str, view: int | str, array: np.ndarray, dtype: type = np.float32) -> None:
        path = self._path(h, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, np.asarray(array, dtype=dtype), allow_pickle=False)
        os.replace(tmp, path)

    def nbytes(self) -> int:
        """Bytes on disk under this key."""
        return sum(p.stat().st_size for p in self.dir.rglob("*.npy")) if self.dir.is_dir() else 0


@dataclass
class CacheReport:
    """What filling a cache cost: inputs computed (not found), their trunk forwards, seconds, bytes on disk."""

    computed: int = 0
    forwards: int = 0
    seconds: float = 0.0
    bytes: int = 0


def _seed_of(h: str, view: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{h}|{view}".encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class CaseViews(Dataset):
    """Item j: (views (V, 3, S, S) of case j's image, j). View 0: the eval transform; view v >= 1: the training
    transform under a generator seeded by (image hash, v), so a view is the same whoever computes it."""

    def __init__(self, store: CaseStore, cases: Sequence[Case], model: MultimodalModel, views: int) -> None:
        self.home, self.cases, self.views = store.home, list(cases), views
        self.clean, self.augment = model.image_transform(train=False), model.image_transform(train=True)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        case = self.cases[j]
        with Image.open(self.home / case.image_path) as img:
            img = img.convert("RGB")
        out = [self.clean(img)]
        for v in range(1, self.views):
            with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from the global RNG
                torch.manual_seed(_seed_of(case.image_sha256, v))
                out.append(self.augment(img))
        return torch.stack(out), j  # (V, 3, S, S)


LESION_FREE = "nolesion"  # the view name of a photo with its lesion removed


def remove_lesion(image: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 photo and its (H, W) lesion mask -> the photo with the lesion filled from the skin around it.

    Normalised convolution (Knutsson & Westin, 1993): the Gaussian-weighted mean of the unmasked pixels, with the
    mask dilated a little so that no rim of lesion stays, plus grain of the skin's own residual sd so that the fill
    is not a smooth patch (which a model could learn to spot instead of the missing lesion). The outlier images of
    outlier exposure (Hendrycks et al., 2019): same skin, light, hair and framing, no lesion.
    """
    from scipy import ndimage

    H, W = mask.shape
    grow = max(1, round(max(H, W) / 50))
    hole = ndimage.binary_dilation(mask.astype(bool), iterations=grow)
    if not hole.any() or hole.all():
        return image.copy()
    img = image.astype(np.float64)
    keep = (~hole).astype(np.float64)
    # No hard seam at the border, and nothing of the lesion blended in: the fill covers the mask fully.
    soft = np.maximum(ndimage.gaussian_filter(hole.astype(np.float64), 1.0), mask)
    fill = np.zeros_like(img)
    todo = soft > 1e-3  # the hole and the rim where the fill is blended in
    sigma = max(H, W) / 16
    while todo.any():
        weight = ndimage.gaussian_filter(keep, sigma)
        ok = todo & (weight > 1e-3)
        for c in range(3):
            fill[..., c][ok] = (ndimage.gaussian_filter(img[..., c] * keep, sigma) / np.maximum(weight, 1e-12))[ok]
        todo &= ~ok
        sigma *= 2
    # Grain: the fine residual of the skin just around the hole (robust sd: hair and rulers are outliers there).
    residual = img - np.stack([ndimage.gaussian_filter(img[..., c], 1.5) for c in range(3)], -1)
    near = ndimage.binary_dilation(hole, iterations=3)  # the lesion's blurred edge is no skin grain
    ring = ndimage.binary_dilation(hole, iterations=3 + 6 * grow) & ~near
    ring = ring if ring.any() else ~hole
    grain = 1.4826 * np.median(np.abs(residual[ring] - np.median(residual[ring], axis=0)), axis=0)  # (3,)
    fill += np.random.default_rng(seed).normal(0.0, 1.0, img.shape) * grain
    return np.clip(img * (1 - soft[..., None]) + fill * soft[..., None], 0, 255).round().astype(np.uint8)


class LesionFreeViews(Dataset):
    """Item j: (case j's photo with its lesion removed, eval transform (3, S, S), j); the cases must have masks."""

    def __init__(self, store: CaseStore, cases: Sequence[Case], model: MultimodalModel) -> None:
        self.store, self.cases, self.transform = store, list(cases), model.image_transform(train=False)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        case = self.cases[j]
        image = np.asarray(self.store.load_image(case).convert("RGB"))
        mask = self.store.load_mask(case)
        if mask.shape != image.shape[:2]:
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.shape[1::-1])) > 127
        free = remove_lesion(image, mask, seed=_seed_of(case.image_sha256, 0) % 2**32)
        return self.transform(Image.fromarray(free)), j


def lesion_free_activations(
    model: MultimodalModel,
    trunk: nn.Module,
    store: CaseStore,
    cases: Sequence[Case],
    cache: ActivationCache,
    device: torch.device,
    batch_size: int = 32,
) -> tuple[torch.Tensor, CacheReport]:
    """(M, C, h, w) trunk activations of the photos of `cases` that have a lesion mask, with the lesion removed."""
    started = time.perf_counter()
    with_mask = list({c.image_sha256: c for c in cases if c.mask_path}.values())
    todo = [c for c in with_mask if cache.get(c.image_sha256, LESION_FREE) is None]
    if todo:
        with torch.inference_mode(False):
            trunk = trunk.eval().to(memory_format=torch.channels_last)
        loader = image_loader(LesionFreeViews(store, todo, model), range(len(todo)), batch_size, 0, False, 0)
        bar = tqdm(total=len(todo), desc="trunk activations (lesion removed)", unit="img", file=sys.stderr)
        for images, idx in loader:
            flat = images.to(device).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                acts = trunk(flat).float().cpu().numpy()  # (b, C, h, w)
            for j, a in zip(idx.tolist(), acts, strict=True):
                cache.put(todo[j].image_sha256, LESION_FREE, a, np.float16)
            bar.update(len(idx))
        bar.close()
    arrays = [cache.get(c.image_sha256, LESION_FREE).astype(np.float32) for c in with_mask]
    out = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0)
    return out, CacheReport(len(todo), len(todo), time.perf_counter() - started, cache.nbytes())


def image_trunk_key(model: MultimodalModel, trunk: nn.Module, blocks: int) -> str:
    """Cache key of an image trunk's views: its weights, where it is cut, the input spec and both transforms."""
    spec, enc = model.image_spec, model.image_encoder
    transforms = (repr(model.image_transform(train=False)), repr(model.image_transform(train=True)))
    return "image-trunk-" + tower_key(trunk, enc.name, f"last {blocks} blocks trainable", spec, *transforms)


def text_trunk_key(model: MultimodalModel, trunk: nn.Module, layers: int) -> str:
    """Cache key of a text trunk's hidden states: its weights, where it is cut, the tokenizer and max length."""
    enc = model.text_encoder
    tokenizer = json.loads(enc.tokenizer.to_str())
    tokenizer.pop("truncation", None)
    tokenizer.pop("padding", None)
    describe = (enc.name, f"last {layers} layers trainable", model.cfg.max_text_length)
    return "text-trunk-" + tower_key(trunk, *describe, json.dumps(tokenizer, sort_keys=True))


def image_activations(
    model: MultimodalModel,
    trunk: nn.Module,
    store: CaseStore,
    cases: Sequence[Case],
    views: int,
    cache: ActivationCache,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
) -> tuple[torch.Tensor, CacheReport]:
    """(N, V, C, h, w) float32 trunk activations of each case's V views, from the cache where present; an image
    missing any view is computed whole (one decode, V trunk forwards) and stored."""
    started = time.perf_counter()
    hashes = [c.image_sha256 for c in cases]
    first: dict[str, int] = {}
    for j, h in enumerate(hashes):
        first.setdefault(h, j)
    found: dict[str, list[np.ndarray]] = {}
    for h in first:
        arrays = [cache.get(h, v) for v in range(views)]
        if all(a is not None for a in arrays):
            found[h] = arrays
    todo = [h for h in first if h not in found]
    forwards = 0
    if todo:
        with torch.inference_mode(False):  # see datasets.image_features: the weights must not become inference tensors
            trunk = trunk.eval().to(memory_format=torch.channels_last)
        dataset = CaseViews(store, [cases[first[h]] for h in todo], model, views)
        per_batch = max(1, batch_size // views)
        loader = image_loader(dataset, range(len(dataset)), per_batch, num_workers, device.type == "cuda", 0)
        bar = tqdm(total=len(todo) * views, desc=f"trunk activations ({views} views)", unit="img", file=sys.stderr)
        for images, idx in loader:  # (b, V, 3, S, S)
            b = images.shape[0]
            flat = images.flatten(0, 1).to(device).contiguous(memory_format=torch.channels_last)  # (b * V, 3, S, S)
            with torch.inference_mode():
                acts = trunk(flat).float().cpu().contiguous().numpy()  # (b * V, C, h, w)
            acts = acts.reshape(b, views, *acts.shape[1:])
            for j, per_view in zip(idx.tolist(), acts, strict=True):
                h = todo[j]
                for v in range(views):
                    cache.put(h, v, per_view[v], np.float32 if v == 0 else np.float16)
                found[h] = [cache.get(h, v) for v in range(views)]  # as stored (float16 views rounded)
            forwards += b * views
            bar.update(b * views)
        bar.close()
    out = torch.from_numpy(np.stack([np.stack([a.astype(np.float32) for a in found[h]]) for h in hashes]))
    report = CacheReport(len(todo), forwards, time.perf_counter() - started, cache.nbytes())
    return out, report  # (N, V, C, h, w)


def text_activations(
    model: MultimodalModel,
    trunk: nn.Module,
    texts: Sequence[str],
    cache: ActivationCache,
    device: torch.device,
    batch_size: int = 64,
) -> tuple[list[torch.Tensor], CacheReport]:
    """Each note's text-trunk hidden states (T_i, H) over its real tokens only (padding is never attended to, so a
    note's states do not depend on the batch it was computed in), from the cache where present."""
    started = time.perf_counter()
    keys = [sha256_text(t) or "empty-note" for t in texts]
    found: dict[str, np.ndarray] = {}
    todo: dict[str, str] = {}
    for k, text in zip(keys, texts, strict=True):
        if k in found or k in todo:
            continue
        array = cache.get(k)
        if array is None:
            todo[k] = text
        else:
            found[k] = array
    if todo:
        trunk = trunk.eval()
        order = sorted(todo, key=lambda k: len(todo[k]))  # similar lengths together: less padding
        bar = tqdm(total=len(order), desc="text trunk states", unit="note", file=sys.stderr)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            tokens = {k: v.to(device) for k, v in model.tokenize([todo[k] for k in chunk]).items()}
            with torch.inference_mode():
                hidden = trunk(tokens["input_ids"], tokens["attention_mask"]).float().cpu().numpy()  # (B, T, H)
            for k, states, mask in zip(chunk, hidden, tokens["attention_mask"].cpu().numpy(), strict=True):
                cache.put(k, 0, states[mask.astype(bool)])
                found[k] = cache.get(k)
            bar.update(len(chunk))
        bar.close()
    out = [torch.from_numpy(found[k]) for k in keys]
    return out, CacheReport(len(todo), len(todo), time.perf_counter() - started, cache.nbytes())


@torch.inference_mode()
def fill_feature_cache(
    model: MultimodalModel,
    partial: PartialModel,
    case_set: CaseSet,
    image_acts: torch.Tensor,
    text_states: dict[str, list[torch.Tensor]] | None,
    cache_dir: Path,
    device: torch.device,
    batch_size: int = 64,
) -> int:
    """Write the trained towers' features of `case_set` (view 0 through the tops) into the feature cache, keyed by
    the trained weights: evaluation, the OOD fit and promotion then read them instead of running the trunks again.
    Returns how many features were written. The tops run in eval mode; the result equals the towers' forward."""
    partial.eval()
    written = 0
    image_cache = FeatureCache(cache_dir / "features", image_tower_key(model))
    for start in range(0, len(case_set), batch_size):
        chunk = case_set.cases[start : start + batch_size]
        feats = partial.image_top(image_acts[start : start + len(chunk), 0].to(device)).float().cpu().numpy()
        for case, f in zip(chunk, feats, strict=True):
            image_cache.put(case.image_sha256, f)
        written += len(chunk)
    if text_states is not None and partial.text_top is not None:
        text_cache = FeatureCache(cache_dir / "features", text_tower_key(model))
        notes = {}  # key -> states, each distinct note once
        for s in case_set.strategies:
            for note, states in zip(case_set.notes[s], text_states[s], strict=True):
                notes.setdefault(sha256_text(note or "") or "empty-note", states)
        keys = sorted(notes, key=lambda k: len(notes[k]))  # similar lengths together: less padding
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            hidden, mask = pad_states([notes[k] for k in chunk])
            feats = partial.text_top(hidden.to(device), mask.to(device)).float().cpu().numpy()  # (B, F_txt)
            for k, f in zip(chunk, feats, strict=True):
                text_cache.put(k, f)
            written += len(chunk)
    return written
