"""The data side of training and evaluation: which cases and labels, which note each case shows in an epoch,
class-balanced sampling sharded over DDP ranks, and the three batch sources: images (full fine-tune), cached encoder
features (frozen backbones, with their on-disk cache here) and cached trunk activations (partial fine-tune; the
activation cache is mmcore.activation_cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmcore.audit import sha256_text
from mmcore.cases import Case, CaseStore
from mmcore.model import MultimodalModel

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]  # (keyword inputs of the trained module, labels (B,))


# ---- which cases ----------------------------------------------------------------------------------------------


@dataclass
class CaseSet:
    """Cases of one split that a model with `classes` can learn from, with their labels and notes.

    notes[s][i] is case i's note of strategy s, or None when the case has none.
    """

    cases: list[Case]
    labels: np.ndarray  # (N,) int64: index into `classes`
    classes: tuple[str, ...]
    strategies: tuple[str, ...]
    notes: dict[str, list[str | None]]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> number of cases left out

    def __len__(self) -> int:
        return len(self.cases)

    def summary(self) -> dict[str, Any]:
        """Counts per class and domain, and what was skipped (for logs and the model card)."""
        return {
            "n": len(self.cases),
            "dx": dict(sorted(Counter(c.dx for c in self.cases).items())),
            "domain": dict(sorted(Counter(c.domain or "(none)" for c in self.cases).items())),
            "source": dict(sorted(Counter(c.source for c in self.cases).items())),
            "skipped": dict(self.skipped),
        }


def load_case_set(
    store: CaseStore,
    split: str,
    classes: Sequence[str],
    strategies: Sequence[str],
    domains: Sequence[str] = (),
    source: str = "",
) -> CaseSet:
    """The split's cases whose dx is one of `classes` and that have a note of one of `strategies`, with their notes.

    Every case left out is counted under its reason (a dx the model does not learn, no note to pair with).
    """
    filters: dict[str, Any] = {"split": split}
    if domains:
        filters["domain"] = list(domains)
    if source:
        filters["source"] = source
    index = {c: i for i, c in enumerate(classes)}
    kept: list[Case] = []
    skipped: Counter = Counter()
    for case in store.cases(with_notes=True, **filters):
        if case.dx not in index:
            skipped[f"dx {case.dx} is not a model class"] += 1
        elif not any(case.notes.get(s) for s in strategies):
            skipped[f"no note of {'/'.join(strategies)}"] += 1
        else:
            kept.append(case)
    return CaseSet(
        cases=kept,
        labels=np.array([index[c.dx] for c in kept], dtype=np.int64),
        classes=tuple(classes),
        strategies=tuple(strategies),
        notes={s: [c.notes.get(s) or None for c in kept] for s in strategies},
        skipped=dict(skipped),
    )


def choose_notes(case_set: CaseSet, seed: int, epoch: int) -> np.ndarray:
    """(N,) index into case_set.strategies: the note each case shows in `epoch`, among the ones it has.

    Deterministic in (seed, epoch), the same on every DDP rank; with one strategy it is always that one.
    """
    have = np.array([[note is not None for note in case_set.notes[s]] for s in case_set.strategies])  # (S, N)
    u = np.random.default_rng([seed, epoch, 7]).random(len(case_set))  # (N,)
    counts = have.sum(0).clip(min=1)  # (N,)
    pick = (u * counts).astype(np.int64)  # which of the available strategies, 0..count-1
    rank = have.cumsum(0) - 1  # (S, N): rank of each available strategy among a case's available ones
    chosen = np.argmax(have & (rank == pick[None]), axis=0)  # (N,)
    return chosen.astype(np.int64)


def texts_for(case_set: CaseSet, choice: np.ndarray) -> list[str]:
    """Each case's note of its chosen strategy ("" when it has none)."""
    return [case_set.notes[case_set.strategies[s]][i] or "" for i, s in enumerate(choice)]


# ---- sampling: balanced, per epoch, sharded over ranks -------------------------------------------------------


def epoch_order(labels: np.ndarray, seed: int, epoch: int, balanced: bool) -> np.ndarray:
    """(N,) the order of training items in `epoch`: class-balanced draws with replacement, or a permutation.

    Balanced draws weight each item by 1 / (its class count), as WeightedRandomSampler does, so every class is
    seen equally often in expectation. Deterministic in (seed, epoch).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=g).numpy()
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)  # (N,)
    return torch.multinomial(weights, n, replacement=True, generator=g).numpy()


def shard(order: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's items of `order`, whole global batches only: steps x (batch_size / world_size) indices.

    Striding (DistributedSampler's order[rank::world]) keeps global batch k = order[k*B:(k+1)*B] split over the
    ranks, so the ranks together see exactly the batches one process would.
    """
    steps = len(order) // batch_size
    return order[: steps * batch_size][rank::world_size]


# ---- image batches (the full fine-tune) -------------------------------------------------------------------------


class _EpochSampler:
    """What both batch sources share: this rank's slice of an epoch's (balanced) order, in whole global batches.

    Subclasses set case_set, batch_size, balanced, seed, rank and world_size.
    """

    case_set: CaseSet
    batch_size: int
    balanced: bool
    seed: int
    rank: int
    world_size: int

    @property
    def steps_per_epoch(self) -> int:
        return len(self.case_set) // self.batch_size

    def _rank_order(self, epoch: int) -> tuple[np.ndarray, int]:
        """(this rank's indices for `epoch`, its local batch size)."""
        order = epoch_order(self.case_set.labels, self.seed, epoch, self.balanced)
        return shard(order, self.batch_size, self.rank, self.world_size), self.batch_size // self.world_size


class CaseImages(Dataset):
    """Item i: (case i's image through `transform` (3, S, S), i)."""

    def __init__(self, store: CaseStore, cases: Sequence[Case], transform: nn.Module) -> None:
        self.home = store.home
        self.cases = list(cases)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.home / self.cases[i].image_path) as img:
            return self.transform(img.convert("RGB")), i


def _ignore_sigterm(worker_id: int) -> None:
    # A cancel signals the whole process group; workers leave the clean stop to the main process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def image_loader(
    dataset: CaseImages, indices: Sequence[int], batch_size: int, num_workers: int, pin_memory: bool, seed: int
) -> DataLoader:
    """Batches of (images (B, 3, S, S), indices (B,)) over `indices` in the given order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigterm if num_workers else None,
        generator=torch.Generator().manual_seed(seed),  # worker seeds, without touching the global RNG
    )


def decoded_batches(
    dataset: CaseImages, batch_size: int, threads: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images (B, 3, S, S), indices (B,)) over the dataset in order, decoded by `threads` threads (0: one
    per core, at most 4) up to two batches ahead of the caller, so decoding overlaps the caller's forward (Pillow
    decodes and resizes without the GIL). At most three batches of pictures are held at once.
    """
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="mmderm-decode")
    try:
        pending: deque[Future] = deque()
        submitted, n = 0, len(dataset)
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            while submitted < min(n, end + 2 * batch_size):
                pending.append(pool.submit(dataset.__getitem__, submitted))
                submitted += 1
            items = [pending.popleft().result() for _ in range(end - start)]
            yield torch.stack([image for image, _ in items]), torch.tensor([i for _, i in items])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a caller that stops early leaves no decode running


class ImageTextBatches(_EpochSampler):
    """Training batches of images and tokenized notes: inputs for MultimodalModel.forward."""

    def __init__(
        self,
        store: CaseStore,
        case_set: CaseSet,
        model: MultimodalModel,
        batch_size: int,
        *,
        augment: bool,
        balanced: bool,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.case_set = case_set
        self.tokenize = model.tokenize
        self.images = CaseImages(store, case_set.cases, model.image_transform(train=augment))
        self.batch_size, self.balanced, self.seed, self.device = batch_size, balanced, seed, device
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.channels_last = device.type == "cuda"

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """This rank's batches of `epoch`, from batch `start` on (a mid-epoch resume skips without loading)."""
        texts = texts_for(self.case_set, choose_notes(self.case_set, self.seed, epoch))
        order, local = self._rank_order(epoch)
        yield from self._batches(order[start * local :], local, texts, seed=self.seed * 1000 + epoch)

    def ordered(self, batch_size: int) -> Iterator[Batch]:
        """Every case once, in order, with the notes of epoch 0's draw (validation)."""
        texts = texts_for(self.case_set, choose_notes(self.case_set, self.seed, 0))
        yield from self._batches(np.arange(len(self.case_set)), batch_size, texts, seed=self.seed)

    def _batches(self, indices: np.ndarray, batch_size: int, texts: list[str], seed: int) -> Iterator[Batch]:
        pin = self.device.type == "cuda"
        for images, idx in image_loader(self.images, indices.tolist(), batch_size, self.num_workers, pin, seed):
            tokens = self.tokenize([texts[i] for i in idx.tolist()])
            images = images.to(self.device, non_blocking=pin)  # (B, 3, S, S)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            inputs = {"images": images, **{k: v.to(self.device) for k, v in tokens.items()}}
            yield inputs, torch.as_tensor(self.case_set.labels[idx.numpy()], device=self.device)


# ---- the feature cache (the frozen-backbone mode) ----------------------------------------------------------------


def tower_key(tower: nn.Module, *describe: object) -> str:
    """Identity of a frozen tower's features: its name, what shapes its input, and the SHA-256 of its weights."""
    digest = hashlib.sha256("|".join(str(d) for d in describe).encode())
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def image_tower_key(model: MultimodalModel) -> str:
    """Cache key of the image tower: weights, input size and normalisation."""
    spec = model.image_spec
    return "image-" + tower_key(model.image_encoder, model.image_encoder.name, spec)


def text_tower_key(model: MultimodalModel) -> str:
    """Cache key of the text tower: weights, tokenizer vocabulary and the truncation length."""
    enc = model.text_encoder
    tokenizer = json.loads(enc.tokenizer.to_str())
    tokenizer.pop("truncation", None)  # set by each tokenize call; the max length is part of the key anyway
    tokenizer.pop("padding", None)
    return "text-" + tower_key(enc, enc.name, model.cfg.max_text_length, json.dumps(tokenizer, sort_keys=True))


class FeatureCache:
    """Encoder features on disk, one float32 .npy per input: `<root>/<tower key>/<h[:2]>/<h>.npy`.

    `h` is the image's SHA-256 or the note text's SHA-256. Files are written atomically and read with
    allow_pickle=False, so several processes may share the cache.
    """

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def _path(self, h: str) -> Path:
        return self.dir / h[:2] / f"{h}.npy"

    def has(self, h: str) -> bool:
        return self._path(h).is_file()

    def get(self, h: str) -> np.ndarray | None:
        path = self._path(h)
        if not path.is_file():
            return None
        return np.load(path, allow_pickle=False)

    def put(self, h: str, vector: np.ndarray) -> None:
        path = self._path(h)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)


def _fill(cache: FeatureCache | None, keys: Sequence[str], dim: int) -> tuple[np.ndarray, dict[str, list[int]]]:
    """(N, dim) features found in the cache, and key -> positions for the keys still missing."""
    out = np.zeros((len(keys), dim), dtype=np.float32)
    missing: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        vector = cache.get(k) if cache is not None and k not in missing else None
        if vector is not None and vector.shape == (dim,):
            out[i] = vector
        else:
            missing.setdefault(k, []).append(i)
    return out, missing


def image_features(
    model: MultimodalModel,
    store: CaseStore,
    cases: Sequence[Case],
    device: torch.device,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    num_workers: int = 0,
) -> torch.Tensor:
    """(N, F_img) image-tower features of the cases' images (eval transform), from the cache where present.

    num_workers: on CPU, threads decoding ahead of the tower (0: one per core); on CUDA, DataLoader worker processes.
    """
    keys = [c.image_sha256 for c in cases]
    out, missing = _fill(cache, keys, model.image_encoder.feature_dim)
    if missing:
        # channels_last: faster EfficientNet/DenseNet convolutions on CPU and GPU alike (layout only, same weights).
        # Converted with inference mode off, even inside a caller's inference_mode: there it would turn the model's own
        # weights into inference tensors, and any later autograd on this model (Grad-CAM) would fail.
        with torch.inference_mode(False):
            tower = model.image_encoder.eval().to(memory_format=torch.channels_last)
        todo = list(missing)
        dataset = CaseImages(store, [cases[missing[k][0]] for k in todo], model.image_transform(train=False))
        if device.type == "cuda" and num_workers:  # a GPU outruns what threads decode: worker processes feed it
            loader = image_loader(dataset, range(len(dataset)), batch_size, num_workers, True, 0)
        else:  # on CPU, decode threads overlap the tower (workers fought it for the cores: 0.73x the bare forward)
            loader = decoded_batches(dataset, batch_size, num_workers)
        bar = tqdm(total=len(todo), desc="image features", unit="img", file=sys.stderr)
        for images, idx in loader:
            images = images.to(device).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
            with torch.inference_mode():
                feats = tower(images).float().cpu().numpy()  # (B, F_img)
            for j, f in zip(idx.tolist(), feats, strict=True):
                if cache is not None:
                    cache.put(todo[j], f)
                out[missing[todo[j]]] = f
            bar.update(len(idx))
        bar.close()
    return torch.from_numpy(out)


@torch.inference_mode()
def text_features(
    model: MultimodalModel,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
) -> torch.Tensor:
    """(N, F_txt) pooled text-tower features of `texts`; equal texts are encoded once, cached ones not at all."""
    keys = [sha256_text(t) or "empty-note" for t in texts]  # the one text hash the audit log uses too
    out, missing = _fill(cache, keys, model.text_encoder.feature_dim)
    if missing:
        tower = model.text_encoder.eval()
        todo = sorted(missing, key=lambda k: len(texts[missing[k][0]]))  # similar lengths together: less padding
        bar = tqdm(total=len(todo), desc="text features", unit="note", file=sys.stderr)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            tokens = {k: v.to(device) for k, v in model.tokenize([texts[missing[k][0]] for k in chunk]).items()}
            feats = tower(tokens["input_ids"], tokens["attention_mask"]).pooled.float().cpu().numpy()  # (B, F)
            for k, f in zip(chunk, feats, strict=True):
                if cache is not None:
                    cache.put(k, f)
                out[missing[k]] = f
            bar.update(len(chunk))
        bar.close()
    return torch.from_numpy(out)


class FeatureBatches(_EpochSampler):
    """Training batches of cached encoder features: inputs for MultimodalHeads.forward (frozen backbones).

    No augmentation here: a feature is computed once per image, which is the point of the mode.
    """

    def __init__(
        self,
        case_set: CaseSet,
        image_feats: torch.Tensor,
        text_feats: torch.Tensor,
        batch_size: int,
        *,
        balanced: bool,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.case_set = case_set
        self.image_feats = image_feats.to(device)  # (N, F_img)
        self.text_feats = text_feats.to(device)  # (S, N, F_txt): one row per strategy
        self.labels = torch.as_tensor(case_set.labels, device=device)  # (N,)
        self.batch_size, self.balanced, self.seed, self.device = batch_size, balanced, seed, device
        self.rank, self.world_size = rank, world_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        choice = torch.as_tensor(choose_notes(self.case_set, self.seed, epoch), device=self.device)  # (N,)
        order, local = self._rank_order(epoch)
        for b in range(start, len(order) // local):
            idx = torch.as_tensor(order[b * local : (b + 1) * local], device=self.device)  # (B,)
            yield self._batch(idx, choice[idx])

    def ordered(self, batch_size: int) -> Iterator[Batch]:
        choice = torch.as_tensor(choose_notes(self.case_set, self.seed, 0), device=self.device)
        for b in range(0, len(self.case_set), batch_size):
            idx = torch.arange(b, min(b + batch_size, len(self.case_set)), device=self.device)
            yield self._batch(idx, choice[idx])

    def _batch(self, idx: torch.Tensor, strategy: torch.Tensor) -> Batch:
        inputs = {"image_features": self.image_feats[idx], "text_features": self.text_feats[strategy, idx]}
        return inputs, self.labels[idx]


def cached_features(
    model: MultimodalModel,
    store: CaseStore,
    case_set: CaseSet,
    cache_dir: Path,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features (N, F_img) and text features (S, N, F_txt) of a case set, through the on-disk cache."""
    image_cache = FeatureCache(cache_dir / "features", image_tower_key(model))
    text_cache = FeatureCache(cache_dir / "features", text_tower_key(model))
    images = image_features(model, store, case_set.cases, device, batch_size, image_cache, num_workers)
    texts = [note or "" for s in case_set.strategies for note in case_set.notes[s]]
    feats = text_features(model, texts, device, batch_size, text_cache)  # (S * N, F_txt)
    return images, feats.view(len(case_set.strategies), len(case_set), -1)


# ---- trunk-activation batches (the partial fine-tune) -----------------------------------------------------------


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Notes' hidden states (T_i, H) -> (hidden (B, T, H) zero-padded to the longest, attention_mask (B, T))."""
    hidden = torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True)  # (B, T, H)
    lengths = torch.tensor([len(x) for x in states])
    mask = (torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (B, T)
    return hidden, mask


class PartialBatches(_EpochSampler):
    """Training batches of cached trunk activations: inputs for PartialModel.forward (partial fine-tuning).

    image_acts (N, V, C, h, w): view 0 is the clean image (validation), views 1.. augmented ones; in each epoch
    every case shows one of its `train_views` first views, drawn deterministically in (seed, epoch), so augmentation
    survives the cache. The text side is either pooled features (S, N, F) of a frozen text tower or, per strategy,
    each note's text-trunk states (T_i, H). outlier_acts (M, C, h, w): trunk activations of photos with their lesion
    removed; every training batch of b cases carries round(b * outlier_ratio) of them (outlier exposure).
    """

    def __init__(
        self,
        case_set: CaseSet,
        image_acts: torch.Tensor,
        text: torch.Tensor | dict[str, list[torch.Tensor]],
        batch_size: int,
        *,
        train_views: int,
        balanced: bool,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        outlier_acts: torch.Tensor | None = None,
        outlier_ratio: float = 0.5,
    ) -> None:
        if not 1 <= train_views <= image_acts.shape[1]:
            raise ValueError(f"train_views must be between 1 and {image_acts.shape[1]}, got {train_views}")
        self.case_set = case_set
        self.image_acts = image_acts.to(device)  # (N, V, C, h, w)
        self.text = text.to(device) if isinstance(text, torch.Tensor) else text  # (S, N, F) or per-strategy states
        self.labels = torch.as_tensor(case_set.labels, device=device)  # (N,)
        self.train_views = train_views
        self.outlier_acts = outlier_acts.to(device) if outlier_acts is not None and len(outlier_acts) else None
        self.outlier_ratio = outlier_ratio
        self.batch_size, self.balanced, self.seed, self.device = batch_size, balanced, seed, device
        self.rank, self.world_size = rank, world_size

    def views_of(self, epoch: int) -> np.ndarray:
        """(N,) the view each case shows in `epoch`, the same on every rank and in a resumed run."""
        return np.random.default_rng([self.seed, epoch, 11]).integers(0, self.train_views, len(self.case_set))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        choice = choose_notes(self.case_set, self.seed, epoch)  # (N,)
        views = self.views_of(epoch)
        order, local = self._rank_order(epoch)
        for b in range(start, len(order) // local):
            idx = order[b * local : (b + 1) * local]  # (B,)
            inputs, labels = self._batch(idx, views[idx], choice[idx])
            if self.outlier_acts is not None:  # drawn per (seed, epoch, batch, rank): the same in a resumed run
                k = max(1, round(local * self.outlier_ratio))
                pick = np.random.default_rng([self.seed, epoch, b, self.rank, 13]).integers(
                    0, len(self.outlier_acts), k
                )
                inputs["outlier_acts"] = self.outlier_acts[torch.as_tensor(pick, device=self.device)]  # (K, C, h, w)
            yield inputs, labels

    def ordered(self, batch_size: int) -> Iterator[Batch]:
        """Every case once, in order, clean view, with the notes of epoch 0's draw (validation)."""
        choice = choose_notes(self.case_set, self.seed, 0)
        for b in range(0, len(self.case_set), batch_size):
            idx = np.arange(b, min(b + batch_size, len(self.case_set)))
            yield self._batch(idx, np.zeros_like(idx), choice[idx])

    def _batch(self, idx: np.ndarray, views: np.ndarray, strategy: np.ndarray) -> Batch:
        i, v = torch.as_tensor(idx, device=self.device), torch.as_tensor(views, device=self.device)
        inputs = {"image_acts": self.image_acts[i, v]}  # (B, C, h, w)
        if isinstance(self.text, torch.Tensor):
            inputs["text_features"] = self.text[torch.as_tensor(strategy, device=self.device), i]  # (B, F)
        else:
            names = self.case_set.strategies
            hidden, mask = pad_states(
                [self.text[names[s]][j] for j, s in zip(idx.tolist(), strategy.tolist(), strict=True)]
            )
            inputs["text_acts"], inputs["attention_mask"] = hidden.to(self.device), mask.to(self.device)
        return inputs, self.labels[i]
