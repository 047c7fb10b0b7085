"""Clinician feedback: a confirmed or corrected diagnosis for an analysed photo, contributed to the case library only
with consent, then reviewed by an admin. Accepted contributions become training cases (marked as clinician-
contributed) of the next fine-tuning run and enter the active version's case index; rejected ones never reach either.
Every step is audited with its user; the photo is kept as the intake rebuilt it from its pixels (no EXIF).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmcore.audit import AuditLog, sha256_text
from mmcore.cases import DX_CODES, MALIGNANCY, Case, CaseStore
from mmcore.config import Config
from mmcore.images import DecodedImage, load_image
from mmcore.model_card import ModelCard
from mmcore.trust import check_metadata

CONFIRMATIONS = ("histopathology", "follow-up", "consensus", "clinical judgement")
SOURCE = "clinician"
STATUSES = ("pending", "accepted", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contributions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    user TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    dx TEXT NOT NULL,
    confirmation TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model_dx TEXT NOT NULL,
    model_probability REAL,
    image_sha256 TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    reviewer TEXT NOT NULL DEFAULT '',
    reviewed REAL,
    reason TEXT NOT NULL DEFAULT '',
    case_id TEXT NOT NULL DEFAULT ''
);
"""


class FeedbackError(ValueError):
    """A contribution cannot be taken or reviewed; the message says why."""


@dataclass(frozen=True)
class Contribution:
    id: int
    created: float
    user: str
    status: str  # pending | accepted | rejected
    dx: str  # what the clinician confirmed
    confirmation: str  # how: one of CONFIRMATIONS
    model_version: str
    model_dx: str  # the model's top class when it was asked
    model_probability: float | None
    image_sha256: str
    note: str
    metadata: dict[str, Any]
    reviewer: str
    reviewed: float | None
    reason: str
    case_id: str  # the library case it became (accepted only)

    @property
    def agrees(self) -> bool:
        """Whether the model's top class was the confirmed diagnosis."""
        return self.model_dx == self.dx


class FeedbackQueue:
    """Contributions of one data home (feedback.sqlite beside the case store; photos under feedback/)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.folder = cfg.home / "feedback"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(cfg.home / "feedback.sqlite", isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._audit = AuditLog(cfg.audit_path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FeedbackQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        image_bytes: bytes,
        *,
        dx: str,
        confirmation: str,
        user: str,
        consent: bool,
        prediction: Any,
        note: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Contribution:
        """Queue a confirmed or corrected diagnosis for review (FeedbackError without consent or a known user)."""
        if not consent:
            raise FeedbackError("a case joins the library only with the patient's consent: tick the consent box")
        if not user or user == "guest":
            raise FeedbackError("sign in to contribute a case: contributions are reviewed and credited by name")
        if dx not in DX_CODES:
            raise FeedbackError(f"diagnosis {dx!r} is not one of {', '.join(DX_CODES)}")
        if confirmation not in CONFIRMATIONS:
            raise FeedbackError(f"confirmation {confirmation!r} is not one of {', '.join(CONFIRMATIONS)}")
        decoded = load_image(image_bytes, self.cfg.intake.max_bytes, self.cfg.intake.upload_max_pixels)
        clean, _ = check_metadata(ModelCard(), metadata or {})  # normalised and validated, as Diagnose does
        path = self.folder / f"{decoded.sha256}.png"
        if not path.exists():  # the pixels the intake rebuilt: no EXIF, no comments, no GPS
            decoded.image.save(path, format="PNG")
        top = prediction.top[0]
        row = self._db.execute(
            "INSERT INTO contributions (created, user, dx, confirmation, model_version, model_dx, model_probability, "
            "image_sha256, note, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                user,
                dx,
                confirmation,
                prediction.model_version,
                top.dx,
                top.probability,
                decoded.sha256,
                (note or "").strip(),
                json.dumps(clean),
            ),
        )
        self._audit.append(
            "feedback_submit",
            user,
            contribution=row.lastrowid,
            dx=dx,
            model_dx=top.dx,
            confirmation=confirmation,
            image_sha256=decoded.sha256,
            note_sha256=sha256_text(note),
            model_version=prediction.model_version,
        )
        return self.get(row.lastrowid)

    def get(self, contribution_id: int) -> Contribution:
        row = self._db.execute("SELECT * FROM contributions WHERE id = ?", (contribution_id,)).fetchone()
        if row is None:
            raise FeedbackError(f"no contribution {contribution_id}")
        return _contribution(row)

    def list(self, status: str | None = None) -> list[Contribution]:
        """Contributions, newest first (of one status when given)."""
        if status is not None and status not in STATUSES:
            raise FeedbackError(f"status must be one of {', '.join(STATUSES)}")
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._db.execute(f"SELECT * FROM contributions {where} ORDER BY id DESC", args).fetchall()
        return [_contribution(r) for r in rows]

    def image_path(self, contribution: Contribution) -> Path:
        return self.folder / f"{contribution.image_sha256}.png"

    def review(self, contribution_id: int, reviewer: str, accept: bool, reason: str = "") -> Contribution:
        """Accept (the case joins the library's training split and the active version's index) or reject (its photo
        is deleted) a pending contribution."""
        c = self.get(contribution_id)
        if c.status != "pending":
            raise FeedbackError(f"contribution {c.id} was already {c.status}")
        case_id = ""
        if accept:
            case_id = self._add_to_library(c)
        else:
            self.image_path(c).unlink(missing_ok=True)
        self._db.execute(
            "UPDATE contributions SET status = ?, reviewer = ?, reviewed = ?, reason = ?, case_id = ? WHERE id = ?",
            ("accepted" if accept else "rejected", reviewer, time.time(), reason.strip(), case_id, c.id),
        )
        indexed = accept and self._index_with_the_active_version()
        event = "feedback_accept" if accept else "feedback_reject"
        self._audit.append(event, reviewer, contribution=c.id, case_id=case_id, contributed_by=c.user, indexed=indexed)
        return self.get(c.id)

    def _index_with_the_active_version(self) -> bool:
        """Put an accepted case into the active version's case index now (the next promotion would anyway)."""
        from mmcore.model_store import ModelStoreError, active_version, refresh_index

        version = active_version(self.cfg)
        if version is None:
            return False
        try:
            refresh_index(self.cfg, version)
        except ModelStoreError:  # the index is owned by another process: the next promotion indexes the case
            return False
        return True

    def _add_to_library(self, c: Contribution) -> str:
        path = self.image_path(c)
        if not path.is_file():
            raise FeedbackError(f"the photo of contribution {c.id} is missing from {self.folder}")
        with CaseStore(self.cfg.home) as store:
            with Image.open(path) as img:
                decoded = DecodedImage(img.convert("RGB"), "png", c.image_sha256)
            sha, rel = store.put_image(decoded)
            meta = c.metadata
            case = Case(
                case_id=f"{SOURCE}:{c.id:06d}",
                source=SOURCE,
                dx=c.dx,
                malignancy=MALIGNANCY.get(c.dx, "indeterminate"),
                image_sha256=sha,
                image_path=rel,
                age=meta.get("age"),
                sex=meta.get("sex"),
                site=meta.get("site") or "unknown",
                fitzpatrick=meta.get("fitzpatrick"),
                dx_type=_DX_TYPE.get(c.confirmation, ""),
                domain="clinical",
                split="train",  # fixed: a clinician's case teaches the next run, it never grades it
                notes={"clinical": c.note} if c.note else {},
                extra={"contributed_by": c.user, "confirmation": c.confirmation, "contribution": c.id},
            )
            result = store.upsert([case])
        if result.duplicates:
            raise FeedbackError(f"this photo is already in the library as case {result.duplicates[0][1]}")
        path.unlink(missing_ok=True)
        return case.case_id

    def agreement(self) -> list[dict[str, Any]]:
        """Per month: reviewed-and-accepted contributions and how often the model's top class agreed with them."""
        months: dict[str, Counter] = {}
        for c in reversed(self.list("accepted")):
            month = time.strftime("%Y-%m", time.gmtime(c.created))
            months.setdefault(month, Counter())["n"] += 1
            months[month]["agreed"] += c.agrees
        return [{"month": m, "n": k["n"], "agreement": k["agreed"] / k["n"]} for m, k in months.items()]


# ISIC's diagnosis confirmation types (cases.DX_TYPES) for the ways a clinician confirms.
_DX_TYPE = {
    "histopathology": "histopathology",
    "follow-up": "serial imaging showing no change",
    "consensus": "single image expert consensus",
    "clinical judgement": "single contributor clinical assessment",
}


def _contribution(row: sqlite3.Row) -> Contribution:
    data = dict(row)
    data["metadata"] = json.loads(data["metadata"])
    return Contribution(**data)


@dataclass(frozen=True)
class Uncertain:
    """A library case the model is unsure about: the smallest gaps between its two top classes, or far from what it
    learned (as MONAI Label's active learning ranks, so that review effort goes where it teaches most)."""

    case_id: str
    dx: str  # the case's recorded diagnosis
    top: str  # the model's top class (image only, calibrated)
    margin: float  # top-1 minus top-2 probability
    ood_score: float | None
    in_distribution: bool | None


def least_sure(cfg: Config, loaded: Any, limit: int = 20, sample: int = 2000) -> list[Uncertain]:
    """The `limit` library cases (of the newest `sample`) with the smallest top-2 margin, out-of-distribution first."""
    import numpy as np
    import torch

    from mmcore.calibrate import Calibration
    from mmcore.datasets import FeatureCache, image_features, image_tower_key

    model = loaded.model
    device = next(model.parameters()).device
    with CaseStore(cfg.home) as store:
        cases = [c for c in store.cases() if c.dx in model.classes][-sample:]
        if not cases:
            return []
        cache = FeatureCache(cfg.cache_dir / "features", image_tower_key(model))
        feats = image_features(model, store, cases, device, cache=cache)  # (N, F)
    with torch.inference_mode():
        logits = model.forward_features(image_features=feats.to(device)).image_logits.float().cpu().numpy()
    calibration = Calibration.from_dict(loaded.card.calibration) if loaded.card.calibration else None
    probs = (
        calibration.probabilities("image", logits)
        if calibration
        else torch.softmax(torch.from_numpy(logits), -1).numpy()
    )
    ordered = np.sort(probs, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    scores = loaded.ood.image.score(feats.numpy()) if loaded.ood and loaded.ood.image else None
    flagged = scores > loaded.ood.image.threshold if scores is not None else np.zeros(len(cases), dtype=bool)
    order = np.lexsort((margins, ~flagged))  # out of distribution first, then the smallest margins
    return [
        Uncertain(
            case_id=cases[i].case_id,
            dx=cases[i].dx,
            top=model.classes[int(probs[i].argmax())],
            margin=float(margins[i]),
            ood_score=None if scores is None else float(scores[i]),
            in_distribution=None if scores is None else not bool(flagged[i]),
        )
        for i in order[:limit]
    ]
