"""Out-of-distribution (OOD) scoring, fitted per model version: is a photo like the training photos (distance to the
nearest training features of the image tower), is a note like the training notes (vocabulary, clinical words, and
distance to the training notes' features); thresholds chosen on validation; saved as ood.safetensors + ood.json.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

if TYPE_CHECKING:
    from mmcore.cases import CaseStore
    from mmcore.datasets import CaseSet
    from mmcore.model import MultimodalModel

SCHEMA_VERSION = 1
WEIGHTS_FILE = "ood.safetensors"
META_FILE = "ood.json"
VAL_PASS = 0.95  # share of in-distribution validation inputs that pass the threshold
IMAGE_METHODS = ("mahalanobis", "knn")
DEFAULT_IMAGE_METHOD = "mahalanobis"  # chosen by bench/results/ood.md
DEFAULT_K = 10
# A note with fewer of its words in the training notes (or English function words) is likely another language or
# garbled. 0.35 lies between the most such words in 45 notes in other languages (20%, bench/ood_inputs.py) and the
# fewest in 20 hand-written English referral notes (45%, bench/note_gate.py) on the demo model; 0.5 refused 2 of
# those 20 as "another language".
MIN_KNOWN_SHARE = 0.35
MIN_CONTENT_WORDS = 3  # distinct clinical words (training vocabulary minus function and form words)
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters in any script; digits and punctuation split words
_FUNCTION_AND_FORM_WORDS = (  # not clinical content: English function words and the words of blank forms
    "a an the and or but nor of on in at to for from by with without as is are was were be been has have had it its "
    "this that these those there here he she they his her their him them i we you my our your me us no not yes "
    "per about over under into out up down than then so very also only any some all each other more most less "
    "what which who whom when where why how do does did done can could may might will would should shall "
    "patient pt name date dob id number nr findings finding diagnosis dx plan comment comments note notes history "
    "exam examination seen see review reviewed today report result results mr mrs ms dr na none nil"
)
_NOT_CONTENT = frozenset(_FUNCTION_AND_FORM_WORDS.split())
_SCALAR_TYPES = {"int": int, "float": float, "str": str}  # the fields of a scorer that ood.json holds


class OODFileError(ValueError):
    """A version's OOD files are missing, malformed or inconsistent; the message says which and why."""


@dataclass(frozen=True)
class OODVerdict:
    """Whether one input is like the training data. `reasons` say why not, in words a clinician reads; `cautions`
    say what is unusual about an input that still passes (a note worded unlike the training notes)."""

    in_distribution: bool
    score: float  # higher: less like the training data
    threshold: float
    reasons: tuple[str, ...] = ()
    cautions: tuple[str, ...] = ()


# ---- scores: higher means less like the training data ------------------------------------------------------------


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(bank: np.ndarray, feats: np.ndarray, k: int) -> np.ndarray:
    """(B,) Euclidean distance of each L2-normalised feature to its k-th nearest row of the unit-norm `bank` (N, F).

    The deep nearest-neighbour score of Sun et al., ICML 2022: no class or density assumption, only normalisation.
    """
    sims = l2_normalise(feats) @ bank.T  # (B, N) cosine similarities
    k = min(k, bank.shape[0])
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # (B,) k-th largest similarity
    return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


def fit_mahalanobis(feats: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whitened class means (C, F), W (F, F)) of class Gaussians with one shared covariance (Lee et al. 2018).

    Ledoit-Wolf shrinkage: 1280-d features of ~1000 cases give a singular sample covariance. W = chol(precision).
    """
    from sklearn.covariance import LedoitWolf

    feats = np.asarray(feats, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([feats[labels == c].mean(0) for c in classes])  # (C, F)
    centred = feats - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_  # (F, F)
    whiten = np.linalg.cholesky((precision + precision.T) / 2)  # precision = W W^T
    return (means @ whiten).astype(np.float32), whiten.astype(np.float32)


def mahalanobis_distance(centres: np.ndarray, whiten: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """(B,) Mahalanobis distance of each feature to the nearest class mean (min over classes, Lee et al. 2018)."""
    z = np.asarray(feats, dtype=np.float32) @ whiten  # (B, F)
    d2 = ((z[:, None, :] - centres[None]) ** 2).sum(-1)  # (B, C)
    return np.sqrt(d2.min(1))


def pass_threshold(val_scores: np.ndarray, rate: float = VAL_PASS) -> tuple[float, float]:
    """(threshold, achieved pass rate): the smallest validation score at or under which `rate` of them fall."""
    s = np.sort(np.asarray(val_scores, dtype=np.float64))
    if not len(s):
        raise ValueError("no validation scores to choose a threshold from")
    threshold = float(s[max(math.ceil(rate * len(s)) - 1, 0)])
    return threshold, float(np.mean(s <= threshold))


# ---- images ----------------------------------------------------------------------------------------------------


@dataclass
class ImageOOD:
    """Image-tower feature scorer on L2-normalised features: Mahalanobis distance to the nearest class mean (Lee et
    al. 2018) or kNN distance (Sun et al. 2022). Normalised Mahalanobis was the best feature score on every OOD set
    of bench/results/ood.md (far-OOD AUROC 0.998, raw features 0.961); logit scores fail on far-OOD (0.64)."""

    method: str
    k: int  # neighbours (knn only)
    threshold: float
    val_pass_rate: float
    arrays: dict[str, np.ndarray]  # knn: bank (N, F) unit rows; mahalanobis: centres (C, F), whiten (F, F)
    feature_dim: int
    n_train: int = 0
    n_val: int = 0

    def score(self, feats: np.ndarray) -> np.ndarray:
        """(B,) OOD score of (B, F) image-tower features; higher: less like the training photos."""
        unit = l2_normalise(np.asarray(feats, dtype=np.float32).reshape(-1, self.feature_dim))
        if self.method == "knn":
            return knn_distance(self.arrays["bank"], unit, self.k).astype(np.float64)
        return mahalanobis_distance(self.arrays["centres"], self.arrays["whiten"], unit).astype(np.float64)

    def verdicts(self, feats: np.ndarray) -> list[OODVerdict]:
        """One verdict per row of (B, F) image-tower features."""
        why = (
            "This image does not look like the skin-lesion photos this model learned from: do not rely on its scores.",
        )
        return [
            OODVerdict(bool(s <= self.threshold), float(s), self.threshold, why * int(s > self.threshold))
            for s in self.score(feats)
        ]


def fit_image_ood(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    val_feats: np.ndarray,
    method: str = DEFAULT_IMAGE_METHOD,
    k: int = DEFAULT_K,
    rate: float = VAL_PASS,
) -> ImageOOD:
    """Fit on the training split's (N, F) image features; threshold so that `rate` of (M, F) validation ones pass."""
    if method not in IMAGE_METHODS:
        raise ValueError(f"image OOD method must be one of {', '.join(IMAGE_METHODS)}, got {method!r}")
    unit = l2_normalise(train_feats)
    if method == "knn":
        arrays = {"bank": unit}
    else:
        centres, whiten = fit_mahalanobis(unit, np.asarray(train_labels))
        arrays = {"centres": centres, "whiten": whiten}
    scorer = ImageOOD(method, k, math.nan, math.nan, arrays, unit.shape[1], len(train_feats), len(val_feats))
    scorer.threshold, scorer.val_pass_rate = pass_threshold(scorer.score(val_feats), rate)
    return scorer


# ---- notes -----------------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case runs of letters (any script): what the vocabulary checks count."""
    return _WORD.findall(text.lower())


@dataclass
class NoteOOD:
    """Note scorer: share of words known from the training notes, clinical words, kNN on text-tower features."""

    k: int
    threshold: float  # kNN distance
    val_pass_rate: float
    bank: np.ndarray  # (N, F_txt) unit rows: the training notes' pooled features
    vocabulary: frozenset[str]
    min_known_share: float = MIN_KNOWN_SHARE
    min_content_words: int = MIN_CONTENT_WORDS
    n_train: int = 0
    n_val: int = 0

    def word_checks(self, text: str) -> tuple[int, int, int]:
        """(words, words known from the training notes, distinct known clinical words) of one note."""
        ws = words(text)
        known = [w for w in ws if w in self.vocabulary or w in _NOT_CONTENT]  # English function/form words count
        return len(ws), len(known), len({w for w in known if w not in _NOT_CONTENT and len(w) > 1})

    def verdicts(self, texts: Sequence[str], feats: np.ndarray) -> list[OODVerdict]:
        """One verdict per note, given the notes' (B, F_txt) pooled text-tower features.

        The word checks decide: on the demo the kNN distance could not tell realistic clinician-written English
        (0.63-1.06) from other languages and blank forms (0.91 and up), so a far neighbour is only a caution.
        """
        distances = knn_distance(self.bank, np.asarray(feats, dtype=np.float32), self.k)
        out = []
        for text, d in zip(texts, distances, strict=True):
            n, known, content = self.word_checks(text)
            reasons = []
            if not n:
                reasons.append("The note has no words.")
            elif known / n < self.min_known_share:
                reasons.append(
                    f"The note has almost no words this model learned from ({known} of {n} words known): it may be "
                    "in another language or garbled."
                )
            elif content < self.min_content_words:
                reasons.append(
                    f"The note has almost no clinical words this model learned from ({content} such as size, "
                    "colour, site or history): its score would rest on almost nothing. A fuller description helps."
                )
            caution = ()
            if d > self.threshold and not reasons:
                caution = ("The note is worded unlike the notes this model learned from: weigh its score with care.",)
            out.append(OODVerdict(not reasons, float(d), self.threshold, tuple(reasons), caution))
        return out


def fit_note_ood(
    train_texts: Sequence[str],
    train_feats: np.ndarray,
    val_feats: np.ndarray,
    k: int = DEFAULT_K,
    rate: float = VAL_PASS,
) -> NoteOOD:
    """Vocabulary of the training notes and a kNN threshold so that `rate` of the validation notes' features pass."""
    bank = l2_normalise(train_feats)
    threshold, achieved = pass_threshold(knn_distance(bank, val_feats, k), rate)
    vocabulary = frozenset(w for t in train_texts for w in words(t))
    return NoteOOD(k, threshold, achieved, bank, vocabulary, n_train=len(train_feats), n_val=len(val_feats))


# ---- the version's scorer: fit, save, load -----------------------------------------------------------------------


def _header(part: ImageOOD | NoteOOD) -> dict[str, Any]:
    """The scalar fields of a scorer (its arrays go to the safetensors file)."""
    return {f.name: getattr(part, f.name) for f in fields(part) if f.type in _SCALAR_TYPES}


def _scalars(cls: type, header: dict[str, Any]) -> dict[str, Any]:
    """The scalar fields of `cls` read back from `header`, each checked against its annotated type."""
    out = {}
    for f in fields(cls):
        kind = _SCALAR_TYPES.get(f.type)
        if kind is not None:
            value = header[f.name]
            typed = not isinstance(value, bool) and isinstance(value, int | float if kind is float else kind)
            if not typed or (kind is float and not math.isfinite(value)):
                raise ValueError(f"{f.name} must be a finite {f.type}, got {value!r}")
            out[f.name] = kind(value)
    return out


@dataclass
class OODScorer:
    """What a model version carries to say whether an input is like its training data."""

    image: ImageOOD | None = None
    note: NoteOOD | None = None

    def card(self) -> dict[str, dict[str, Any]]:
        """Modality ("image", "note") -> method, k, threshold and validation pass rate, for the model card."""
        keys = ("method", "k", "threshold", "val_pass_rate", "min_known_share", "min_content_words")
        parts = (("image", self.image), ("note", self.note))
        return {name: {k: v for k, v in _header(p).items() if k in keys} for name, p in parts if p is not None}

    def save(self, folder: Path) -> list[str]:
        """Write ood.safetensors and ood.json into `folder`; returns the file names (to hash with the version)."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "val_pass_target": VAL_PASS}
        if self.image is not None:
            arrays |= {f"image.{n}": a for n, a in self.image.arrays.items()}
            meta["image"] = {**_header(self.image), "features": "image tower pooled output, L2-normalised"}
        if self.note is not None:
            arrays["note.bank"] = self.note.bank
            meta["note"] = {**_header(self.note), "vocabulary": sorted(self.note.vocabulary)}
        arrays = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in arrays.items()}
        meta["shapes"] = {n: list(a.shape) for n, a in arrays.items()}
        folder = Path(folder)
        (folder / WEIGHTS_FILE).write_bytes(save_arrays(arrays, metadata={"format": "np"}))
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return [WEIGHTS_FILE, META_FILE]

    @classmethod
    def load(cls, folder: Path) -> OODScorer:
        """Read what save wrote; OODFileError for anything missing, truncated, edited or inconsistent."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            arrays = load_arrays((folder / WEIGHTS_FILE).read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as e:
            raise OODFileError(f"{folder}: unreadable OOD files ({e})") from None
        try:
            return _from_files(meta, arrays)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise OODFileError(f"{folder}: malformed OOD files ({type(e).__name__}: {e})") from None


def _from_files(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> OODScorer:
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {meta['schema_version']!r}, this code reads {SCHEMA_VERSION}")
    shapes = meta["shapes"]
    if sorted(shapes) != sorted(arrays):
        raise ValueError(f"arrays {sorted(arrays)} differ from those recorded {sorted(shapes)}")
    for name, a in arrays.items():
        if list(a.shape) != shapes[name] or a.dtype != np.float32 or a.ndim != 2 or not np.isfinite(a).all():
            raise ValueError(f"array {name}: {a.dtype} {list(a.shape)}, recorded float32 {shapes[name]} and finite")
    image = note = None
    if "image" in meta:
        parts = {n.removeprefix("image."): a for n, a in arrays.items() if n.startswith("image.")}
        image = ImageOOD(**_scalars(ImageOOD, meta["image"]), arrays=parts)
        needed = {"knn": {"bank"}, "mahalanobis": {"centres", "whiten"}}.get(image.method)
        if needed is None or set(parts) != needed or {a.shape[-1] for a in parts.values()} != {image.feature_dim}:
            raise ValueError(f"image method {image.method!r} with arrays {sorted(parts)}")
    if "note" in meta:
        vocabulary = meta["note"]["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
            raise ValueError("the note vocabulary must be a list of words")
        note = NoteOOD(**_scalars(NoteOOD, meta["note"]), bank=arrays["note.bank"], vocabulary=frozenset(vocabulary))
    return OODScorer(image, note)


def load_ood(folder: Path) -> OODScorer | None:
    """A version folder's OOD scorer, or None when the version has none (saved before OOD scoring existed)."""
    present = (Path(folder) / META_FILE).exists() or (Path(folder) / WEIGHTS_FILE).exists()
    return OODScorer.load(folder) if present else None


@torch.inference_mode()
def image_ood_features(model: MultimodalModel, images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) normalised images -> (B, F_img) image-tower features, what ImageOOD scores."""
    return model.image_encoder.eval()(images).float().cpu().numpy()


def note_features(model: MultimodalModel, texts: Sequence[str]) -> np.ndarray:
    """(B, F_txt) pooled text-tower features of the notes, what NoteOOD scores."""
    from mmcore.datasets import text_features

    return text_features(model, texts, next(model.parameters()).device).numpy()


def fit_ood(
    model: MultimodalModel,
    store: CaseStore,
    strategies: Sequence[str],
    cache_dir: Path | None = None,
    domains: Sequence[str] = (),
    source: str = "",
    method: str = DEFAULT_IMAGE_METHOD,
    k: int = DEFAULT_K,
) -> OODScorer:
    """Fit both scorers for a trained model on its training cases and threshold them on its validation cases.

    Use the training run's note strategies, domains and source, so the scorer knows what the model knew.
    cache_dir: the feature cache (keyed by the towers' weights, so valid for frozen and fine-tuned towers alike).
    """
    from mmcore.datasets import load_case_set

    train = load_case_set(store, "train", model.classes, strategies, domains, source)
    val = load_case_set(store, "val", model.classes, strategies, domains, source)
    if not len(train) or not len(val):
        raise ValueError(f"OOD fitting needs training and validation cases; got {len(train)} and {len(val)}")
    train_img, train_texts, train_txt = case_set_features(model, store, train, cache_dir)
    val_img, _, val_txt = case_set_features(model, store, val, cache_dir)
    image = fit_image_ood(train_img, train.labels, val_img, method, k)
    return OODScorer(image, fit_note_ood(train_texts, train_txt, val_txt, k))


def case_set_features(
    model: MultimodalModel, store: CaseStore, case_set: CaseSet, cache_dir: Path | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(image features (N, F_img), the set's notes (M,), their text features (M, F_txt)), through the cache if given."""
    from mmcore.datasets import cached_features, image_features, text_features

    device = next(model.parameters()).device
    texts = [note or "" for s in case_set.strategies for note in case_set.notes[s]]  # (S * N,), "" where none
    if cache_dir is not None:
        images, feats = cached_features(model, store, case_set, cache_dir, device)
        feats = feats.reshape(len(texts), -1)  # (S, N, F) -> (S * N, F) in the order of `texts`
    else:
        images = image_features(model, store, case_set.cases, device)
        feats = text_features(model, texts, device)
    have = np.array([bool(t) for t in texts], dtype=bool)
    return images.numpy(), [t for t in texts if t], feats.numpy()[have]
