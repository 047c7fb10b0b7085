"""The Predictor: what pages call (DESIGN sections 2 and 9). One loaded model version, shared by every Streamlit
session: predict, explain, find similar cases, embed, and draft a description for a clinician to edit.

Thread safety: predictions run under torch.inference_mode on the shared model, which no one mutates. Explanations
run on a private copy of the model (Captum's hooks on the shared one would fire in other sessions' forwards),
one at a time. Caches are LRUs behind their own locks.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmcore.audit import AuditLog, sha256_text
from mmcore.calibrate import Calibration
from mmcore.case_filters import CaseFilter
from mmcore.cases import DX_NAMES, MALIGNANCY, CaseStore
from mmcore.concepts import FindingScore
from mmcore.config import Config
from mmcore.devices import resolve_device
from mmcore.explain_image import IMAGE_METHODS, attribute_image, model_lock, similarity_maps
from mmcore.explain_text import attention_maps, integrated_gradients_text, merge_word_pieces, pooled_relevance, scaled
from mmcore.images import DecodedImage, load_image
from mmcore.lru import LRU
from mmcore.model import MultimodalModel
from mmcore.model_card import ModelCard
from mmcore.ood import OODScorer
from mmcore.overlays import colorbar, overlay, resize_map
from mmcore.similar import RetrievalUnavailable, SimilarCase, SimilarityExplanation, load_similar_cases
from mmcore.trust import InputCheck, check_inputs, check_metadata

DISPLAY_SIDE = 512  # explanations come back at most this many pixels on the long side
LOW_CONFIDENCE = 0.5
MALIGNANT_WATCH = 0.2  # a malignant class below the top one but at least this probable gets a warning


@dataclass(frozen=True)
class ClassScore:
    """One class in a ranking: code, full name, probability and where ISIC files it (benign/malignant/indeterminate)."""

    dx: str
    name: str
    probability: float
    malignancy: str


@dataclass(frozen=True)
class Prediction:
    """Calibrated probabilities per modality ("image", "text", "fused": class -> probability, None where absent;
    "fused" only when both were given), the top-k of `modality` (fused if present, else the one given), input
    hashes, and first of all whether the inputs are like the training data (`check`, mmcore.trust)."""

    probabilities: dict[str, dict[str, float] | None]
    top: list[ClassScore]
    modality: str
    image_sha256: str
    note_sha256: str
    model_version: str
    check: InputCheck
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = False

    @property
    def in_distribution(self) -> bool | None:
        """Whether every input is like the training data (None: this version has no OOD gate)."""
        return self.check.in_distribution

    @property
    def ood_score(self) -> float | None:
        return self.check.ood_score

    @property
    def reasons(self) -> list[str]:
        """Why the inputs are out of distribution, in plain words (empty when they are not)."""
        return self.check.reasons


@dataclass(frozen=True)
class Explanation:
    """Why the model scores class `target`.

    image: the upload, upright, at most DISPLAY_SIDE px (None without an image); heatmap: (H, W) float32 in [0, 1]
    at the image's size. words: [(word, score)] Integrated Gradients over the note's real words, scores in [-1, 1]
    (positive: pushes towards `target`). tokens: the note as the encoder read it, [CLS]/[SEP] included, aligned
    with attentions (L, heads, T, T) and rollout (T,) (how much the pooled note vector draws on each token);
    rollout_words: the rollout merged into words (real tokens only, max 1). through: "own" (each modality's own
    logits) or "fused".
    """

    method: str
    target: str
    target_index: int
    through: str
    model_version: str
    image: Image.Image | None = None
    heatmap: np.ndarray | None = None
    words: list[tuple[str, float]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    attentions: np.ndarray | None = None
    rollout: np.ndarray | None = None
    rollout_words: list[tuple[str, float]] = field(default_factory=list)

    def overlay(self, opacity: float = 0.45, colormap: str = "inferno", contour_top: float | None = 0.2) -> Image.Image:
        """The photo with the heat map blended at `opacity` and the top-`contour_top` region outlined."""
        if self.image is None or self.heatmap is None:
            raise ValueError("this explanation has no image")
        return overlay(self.image, self.heatmap, opacity, colormap, contour_top)

    def colorbar(self, colormap: str = "inferno") -> Image.Image:
        """The legend of the overlay's colours."""
        return colorbar(colormap)


@dataclass(frozen=True)
class _ImageInput:
    sha256: str  # of the decoded pixels, as the case store addresses images
    size: tuple[int, int]  # of the upload
    display: Image.Image  # at most DISPLAY_SIDE px
    tensor: torch.Tensor  # (1, 3, S, S) normalised, on the model's device
    warnings: tuple[str, ...] = ()  # what the intake could not honour (an unreadable EXIF orientation)


class Predictor:
    """One model version, loaded once; every method is safe to call from many threads at once."""

    def __init__(
        self, model: MultimodalModel, cfg: Config, version: str, card: ModelCard, ood: OODScorer | None = None
    ) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.version = version
        self.card = card
        self.ood = ood
        self.calibration = Calibration.from_dict(card.calibration) if card.calibration else None
        self.classes: tuple[str, ...] = tuple(model.classes)
        self.device = next(model.parameters()).device
        self._transform = model.image_transform()
        self._images = LRU(16)
        self._notes = LRU(256)
        self._features = LRU(64)  # tower features per input: predict, check, similar and the draft share them
        self._durations: dict[tuple[str, bool], float] = {}
        self._explanations = LRU(64)
        self._explainer: MultimodalModel | None = None
        self._explainer_lock = threading.Lock()
        self._audit = AuditLog(cfg.audit_path)
        self._store: CaseStore | None = None
        self._store_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Config, version: str | None = None) -> Predictor:
        """Load `version` (None: the active one) on cfg.runtime.device; ModelStoreError says what is missing."""
        from mmcore.model_store import load_version

        loaded = load_version(cfg, version, device=resolve_device(cfg.runtime.device))
        return cls(loaded.model, cfg, loaded.version, loaded.card, loaded.ood)

    # --- inputs -------------------------------------------------------------------------------------------------

    @property
    def _min_side(self) -> int:
        return max(self.model.image_spec.image_size, DISPLAY_SIDE // 2)

    def image_input(self, image_bytes: bytes) -> _ImageInput:
        """Intake and preprocessing, once per upload: a Streamlit rerun, explain and similar reuse them."""
        key = hashlib.sha256(image_bytes).hexdigest()
        return self._images.get_or(
            key,
            lambda: self._prepare(
                # A phone photo decoded at reduced scale, both sides still >= the model's input and half the display
                # size: a full decode of 2 megapixels cost more than the bar of 1.25x the forward
                # (bench/predict_overhead.py).
                load_image(
                    image_bytes, self.cfg.intake.max_bytes, self.cfg.intake.upload_max_pixels, min_side=self._min_side
                )
            ),
        )

    def _prepare(self, decoded: DecodedImage) -> _ImageInput:
        tensor = self._transform(decoded.image).unsqueeze(0).to(self.device)  # (1, 3, S, S)
        # The copy shown under explanations: a box reduction by an integer factor costs about a millisecond where a
        # resampling thumbnail of a phone photo costs several (bench/results/predict_overhead.md).
        factor = math.ceil(max(decoded.size) / DISPLAY_SIDE)
        display = decoded.image.reduce(factor) if factor > 1 else decoded.image
        return _ImageInput(decoded.sha256, decoded.size, display, tensor, tuple(decoded.warnings))

    def _note(self, note: str) -> dict[str, torch.Tensor]:
        key = sha256_text(note)
        return self._notes.get_or(key, lambda: {k: v.to(self.device) for k, v in self.model.tokenize([note]).items()})

    def _inputs(self, image_bytes: bytes | None, note: str | None) -> tuple[_ImageInput | None, str | None]:
        note = note.strip() if note and note.strip() else None
        if image_bytes is None and note is None:
            raise ValueError("Give a photo, a note, or both.")
        return (self.image_input(image_bytes) if image_bytes is not None else None), note

    def _tower_features(
        self, image: _ImageInput | None, note: str | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(1, F_img) image-tower and (1, F_txt) pooled text-tower features, computed once per input."""

        def image_feats() -> torch.Tensor:
            with torch.inference_mode():
                return self.model.image_encoder(image.tensor)

        def text_feats() -> torch.Tensor:
            with torch.inference_mode():
                return self.model.text_encoder(**self._note(note)).pooled

        img = self._features.get_or(("image", image.sha256), image_feats) if image is not None else None
        txt = self._features.get_or(("text", sha256_text(note)), text_feats) if note is not None else None
        return img, txt

    def _forward(self, image: _ImageInput | None, note: str | None) -> Any:
        image_features, text_features = self._tower_features(image, note)
        with torch.inference_mode():
            return self.model.forward_features(image_features, text_features)

    def _check(self, image: _ImageInput | None, note: str | None) -> InputCheck:
        image_features, text_features = self._tower_features(image, note)
        return check_inputs(
            self.ood,
            self.card,
            None if image_features is None else image_features.float().cpu().numpy(),
            note,
            None if text_features is None else text_features.float().cpu().numpy(),
        )

    def check(self, image_bytes: bytes | None, note: str | None) -> InputCheck:
        """Whether a photo and/or note are like this model's training data (what every page says first)."""
        return self._check(*self._inputs(image_bytes, note))

    def _target_index(self, target: str | int | None, default: int) -> int:
        if target is None:
            return default
        if isinstance(target, str):
            if target not in self.classes:
                raise ValueError(f"unknown class {target!r}; this model knows {', '.join(self.classes)}")
            return self.classes.index(target)
        if not 0 <= int(target) < len(self.classes):
            raise ValueError(f"class index {target} is outside 0..{len(self.classes) - 1}")
        return int(target)

    # --- predict ------------------------------------------------------------------------------------------------

    def predict(
        self,
        image_bytes: bytes | None,
        note: str | None,
        metadata: dict[str, Any] | None = None,
        user: str = "",
        top_k: int = 3,
    ) -> Prediction:
        """Probabilities from the image, the note, or both; written to the audit log (hashes, never the inputs).

        metadata (age, sex, site, fitzpatrick) is checked and echoed, and warns where training data was thin; the
        model itself reads only the image and the note. A bad upload raises images.ImageRejected (readable text).
        """
        image, note = self._inputs(image_bytes, note)
        clean, warnings = check_metadata(self.card, metadata or {})
        check = self._check(image, note)
        note_verdict, image_verdict = check.verdicts.get("note"), check.verdicts.get("image")
        if note_verdict and not note_verdict.in_distribution and image_verdict and image_verdict.in_distribution:
            # A photo the model knows with a note it cannot read: score the photo alone, and say why.
            warnings.append("The note was not used: " + " ".join(note_verdict.reasons))
            note, check = None, self._check(image, None)
        out = self._forward(image, note)
        probabilities: dict[str, dict[str, float] | None] = {"image": None, "text": None, "fused": None}
        for modality, logits in (("image", out.image_logits), ("text", out.text_logits)):
            if logits is not None:
                probabilities[modality] = self._probs(logits, modality)
        if image is not None and note is not None:
            probabilities["fused"] = self._probs(out.fused_logits, "fused")
        modality = "fused" if probabilities["fused"] else ("image" if image is not None else "text")
        ranked = sorted(probabilities[modality].items(), key=lambda kv: -kv[1])[: max(1, top_k)]
        top = [ClassScore(dx, DX_NAMES.get(dx, dx), p, MALIGNANCY.get(dx, "indeterminate")) for dx, p in ranked]
        intake = list(image.warnings) if image is not None else []
        warnings = check.cautions + intake + self._warnings(probabilities, modality, top, image, note) + warnings
        if check.in_distribution is None:
            warnings.append(
                "this model version has no out-of-distribution gate: nothing says whether the inputs "
                f"are like its training data (python -m mmcore models fit-ood {self.version})"
            )
        if self.calibration is None:
            warnings.append("this model version is not calibrated: its scores may be over- or under-confident")
        prediction = Prediction(
            probabilities=probabilities,
            top=top,
            modality=modality,
            image_sha256=image.sha256 if image is not None else "",
            note_sha256=sha256_text(note),
            model_version=self.version,
            check=check,
            warnings=warnings,
            metadata=clean,
            calibrated=self.calibration is not None,
        )
        self._audit.append(
            "predict",
            user,
            model_version=self.version,
            image_sha256=prediction.image_sha256,
            note_sha256=prediction.note_sha256,
            top=top[0].dx,
            probability=round(top[0].probability, 4),
            modality=modality,
            in_distribution=check.in_distribution,
            ood_score=None if check.ood_score is None else round(check.ood_score, 4),
        )
        return prediction

    def _probs(self, logits: torch.Tensor, modality: str) -> dict[str, float]:
        """Calibrated probabilities (the version's temperature for this modality) of (1, C) logits."""
        temperature = self.calibration.temperatures.get(modality, 1.0) if self.calibration else 1.0
        p = (logits[0].float() / temperature).softmax(-1).cpu().tolist()
        return dict(zip(self.classes, p, strict=True))

    def _warnings(
        self,
        probabilities: dict[str, dict[str, float] | None],
        modality: str,
        top: list[ClassScore],
        image: _ImageInput | None,
        note: str | None,
    ) -> list[str]:
        out = []
        img, txt = probabilities["image"], probabilities["text"]
        if img and txt:
            i, t = max(img, key=img.get), max(txt, key=txt.get)
            if i != t:
                out.append(
                    f"image and note disagree: the image points to {DX_NAMES.get(i, i)} ({img[i]:.0%}), "
                    f"the note to {DX_NAMES.get(t, t)} ({txt[t]:.0%})"
                )
        if top[0].probability < LOW_CONFIDENCE:
            out.append(f"low confidence: the top score is only {top[0].probability:.0%}")
        ranked = sorted(probabilities[modality].items(), key=lambda kv: -kv[1])
        for dx, p in ranked[1:]:
            if MALIGNANCY.get(dx) == "malignant" and p >= MALIGNANT_WATCH and top[0].malignancy != "malignant":
                out.append(f"a malignant class is close behind: {DX_NAMES.get(dx, dx)} scores {p:.0%}")
                break
        side = self.model.image_spec.image_size
        if image is not None and min(image.size) < side:
            out.append(
                f"the photo is {image.size[0]} x {image.size[1]} px, smaller than the model's input "
                f"({side} px): it was enlarged"
            )
        if note is not None and int(self._note(note)["attention_mask"].sum()) >= self.model.cfg.max_text_length:
            out.append(f"the note is long: only its first {self.model.cfg.max_text_length} tokens were read")
        return out

    # --- explain ------------------------------------------------------------------------------------------------

    def expected_seconds(self, method: str, with_note: bool) -> float | None:
        """How long the last explanation by `method` took here (None before the first): what a progress bar shows."""
        return self._durations.get((method, with_note))

    def warm_up(self) -> None:
        """Pay the first-call costs (tower forwards, the explainer copy, Captum, the findings scorer with its prompt
        embeddings, the case index) before a user does."""
        from mmcore.explain_findings import explain_finding

        buf = io.BytesIO()
        Image.new("RGB", (self.model.image_spec.image_size,) * 2, (205, 155, 135)).save(buf, format="PNG")
        self.explain(buf.getvalue(), "warm-up note", "gradcam")
        explain_finding(self, buf.getvalue(), self.findings(buf.getvalue())[0].name)
        with contextlib.suppress(RetrievalUnavailable):
            self.similar(buf.getvalue(), None, k=1)

    def _explainer_model(self) -> MultimodalModel:
        """A private copy for Captum: its hooks never fire in other sessions' predictions on self.model."""
        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = copy.deepcopy(self.model).eval().requires_grad_(False)
            return self._explainer

    def explain(
        self,
        image_bytes: bytes | None,
        note: str | None,
        method: str = "gradcam",
        target: str | int | None = None,
        fused: bool = False,
        cancel: threading.Event | None = None,
    ) -> Explanation:
        """Why the model scores `target` (None: the predicted class): a heat map by `method` (gradcam, ig,
        smoothgrad, occlusion) on the image, Integrated Gradients and attention on the note. Through each modality's
        own logits, or the fused ones (`fused=True`, both inputs needed). Cached per (version, inputs, method, target).
        Setting `cancel` stops the computation at its next forward pass (ExplanationCancelled).
        """
        if method not in IMAGE_METHODS:
            raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(IMAGE_METHODS)}")
        image, note = self._inputs(image_bytes, note)
        fused = bool(fused and image is not None and note is not None)
        key = (self.version, image.sha256 if image else "", sha256_text(note), method, target, fused)
        cached = self._explanations.get(key)
        if cached is not None:
            return cached
        index = self._target_index(target, -1)
        if index < 0:  # the predicted class: fused when both inputs are given
            index = int(self._forward(image, note).logits.argmax(-1))
        explainer = self._explainer_model()
        tokens = self._note(note) if note is not None else None
        parts: dict[str, Any] = {}
        started = time.perf_counter()
        with model_lock(explainer), _cancellable(explainer, cancel):
            with torch.no_grad():
                note_features = explainer.text_encoder(**tokens).pooled if fused else None  # (1, F_txt)
                image_features = explainer.image_encoder(image.tensor) if fused else None  # (1, F_img)
            if image is not None:
                heat = attribute_image(explainer, image.tensor, method, index, note_features)[0].cpu().numpy()
                parts["image"] = image.display
                parts["heatmap"] = _readonly(np.clip(resize_map(heat, image.display.size), 0, 1))
            if note is not None:
                ids, mask = tokens["input_ids"], tokens["attention_mask"]
                attribution = integrated_gradients_text(explainer, ids, mask, index, image_features)
                attentions = attention_maps(explainer, ids, mask)
                relevance = pooled_relevance(explainer.text_encoder, attentions)
                length = len(relevance)
                parts["words"] = attribution.words
                parts["tokens"] = attribution.tokens[:length]
                parts["attentions"] = _readonly(attentions)
                parts["rollout"] = _readonly(relevance)
                parts["rollout_words"] = scaled(
                    merge_word_pieces(attribution.tokens[:length], relevance, attribution.real[:length])
                )
        self._durations[(method, note is not None)] = time.perf_counter() - started
        explanation = Explanation(
            method=method,
            target=self.classes[index],
            target_index=index,
            through="fused" if fused else "own",
            model_version=self.version,
            **parts,
        )
        return self._explanations.put(key, explanation)

    # --- embed, similar -----------------------------------------------------------------------------------------

    def embed(self, image_bytes: bytes | None = None, note: str | None = None) -> dict[str, np.ndarray]:
        """The shared-space embeddings (D,), L2-normalised: "image" and/or "text"."""
        image, note = self._inputs(image_bytes, note)
        out = self._forward(image, note)
        vectors = {"image": out.image_embeds, "text": out.text_embeds}
        return {k: v[0].float().cpu().numpy() for k, v in vectors.items() if v is not None}

    def findings(self, image_bytes: bytes) -> list[FindingScore]:
        """A score per ABCD finding of the photo (probe-calibrated where the version has one), in vocabulary order."""
        from mmcore.explain_findings import score_findings

        return score_findings(self, image_bytes)

    def similar(
        self,
        image_bytes: bytes | None = None,
        note: str | None = None,
        k: int = 8,
        where: CaseFilter | dict[str, Any] | None = None,
        modality: str = "image",
        weights: tuple[float, float] = (0.5, 0.5),
    ) -> list[SimilarCase]:
        """The k cases nearest the query in the `modality` collection ("image" or "text"), best first.

        Image and note live in one space, so a note alone searches the image collection too (cross-modal). With
        both, the query is w * image + (1 - w) * text, renormalised, with w = weights[0] / sum(weights)
        (index.combine_queries). `where` filters on case metadata: a CaseFilter, or a dict as
        case_filters.parse_filters reads it. RetrievalUnavailable (a ValueError) when this model has no index yet.
        """
        from mmcore import index

        if modality not in index.MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(index.MODALITIES)}, got {modality!r}")
        w_image, w_text = (float(w) for w in weights)
        if w_image < 0 or w_text < 0 or w_image + w_text <= 0:
            raise ValueError(f"weights must be non-negative and not both zero, got {weights}")
        vectors = self.embed(image_bytes, note)
        query = index.combine_queries(vectors.get("image"), vectors.get("text"), w_image / (w_image + w_text))
        kinds = [m for m, w in (("image", w_image), ("text", w_text)) if m in vectors and w > 0]
        try:
            hits = index.query(
                self.cfg,
                self.version,
                modality,
                query,
                k=k,
                where=where,
                query_kind=kinds[0] if len(kinds) == 1 else "both",
            )
        except (index.IndexNotBuiltError, index.IndexLockedError, ConnectionError) as e:
            raise RetrievalUnavailable(f"Similar cases are not available: {str(e).splitlines()[0]}") from None
        store = self._store_handle()
        with self._store_lock:  # one SQLite connection: reads one at a time
            return load_similar_cases(store, hits, modality)

    def _store_handle(self) -> CaseStore:
        with self._store_lock:
            if self._store is None:
                self._store = CaseStore(self.cfg.home)
            return self._store

    def explain_similarity(
        self, case_id: str, image_bytes: bytes | None = None, note: str | None = None, method: str = "gradcam"
    ) -> SimilarityExplanation:
        """Why `case_id` is similar to the query: a map (method gradcam or ig) of what drives the cosine similarity on
        each image: the query's image (if any) against the case's image embedding, and the case's image against the
        query's embedding (its image, else its note: cross-modal)."""
        image, note = self._inputs(image_bytes, note)
        store = self._store_handle()
        with self._store_lock:
            case = store.get(case_id)
        if case is None:
            raise ValueError(f"no case {case_id!r} in the case store")
        case_input = self.image_input((store.home / case.image_path).read_bytes())
        query = self.embed(image_bytes, note)
        query_vector = query.get("image", query.get("text"))
        case_vector = self._embed_image(case_input)
        explainer = self._explainer_model()
        with model_lock(explainer):
            query_tensor = torch.from_numpy(query_vector).to(self.device)
            case_map = similarity_maps(explainer, case_input.tensor, query_tensor, method)
            query_map = None
            if image is not None:
                case_tensor = torch.from_numpy(case_vector).to(self.device)
                query_map = similarity_maps(explainer, image.tensor, case_tensor, method)
        return SimilarityExplanation(
            case_id=case_id,
            score=float(np.dot(query_vector, case_vector)),
            query_image=image.display if image is not None else None,
            query_heatmap=None
            if query_map is None
            else _readonly(resize_map(query_map[0].cpu().numpy(), image.display.size)),
            case_image=case_input.display,
            case_heatmap=_readonly(resize_map(case_map[0].cpu().numpy(), case_input.display.size)),
        )

    def _embed_image(self, image: _ImageInput) -> np.ndarray:
        with torch.inference_mode():
            return self.model(images=image.tensor).image_embeds[0].float().cpu().numpy()

    def draft_note(self, image_bytes: bytes, user: str = "") -> str:
        """A description for a clinician to edit, from the photo alone (mmcore.draft); audited with its user."""
        from mmcore.draft import draft_description

        text = draft_description(self, image_bytes, user=user)
        self._audit.append("draft", user, model_version=self.version, image_sha256=self.image_input(image_bytes).sha256)
        return text


class ExplanationCancelled(RuntimeError):
    """The caller asked for another explanation before this one finished."""


@contextlib.contextmanager
def _cancellable(model: MultimodalModel, cancel: threading.Event | None) -> Iterator[None]:
    """Stop a long attribution at its next forward pass once `cancel` is set (Captum has no cancel of its own)."""
    if cancel is None:
        yield
        return

    def check(module: torch.nn.Module, args: Any) -> None:
        if cancel.is_set():
            raise ExplanationCancelled("another explanation was asked for")

    handles = [tower.register_forward_pre_hook(check) for tower in (model.image_encoder, model.text_encoder)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _readonly(array: np.ndarray) -> np.ndarray:
    """Cached explanations are shared between sessions: their arrays must not be edited in place."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.flags.writeable = False
    return array
