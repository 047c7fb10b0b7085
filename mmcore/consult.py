"""The consult report: one analysis as a PDF (reportlab), the out-of-distribution verdict first, then the calibrated
scores per modality (withheld for inputs the model does not know, unless asked for), the photo with its overlay, the
note's word attributions, the findings, similar cases, the model card summary and the inputs' SHA-256; the research-use
disclaimer on every page. Each export is written to the audit log (hashes, never the note).
"""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from PIL import Image
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import registerFontFamily
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Image as PdfImage
from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from mmcore import DISCLAIMER
from mmcore.audit import AuditLog
from mmcore.cases import DX_NAMES

if TYPE_CHECKING:
    from mmcore.concepts import FindingScore
    from mmcore.predictor import Explanation, Prediction, Predictor
    from mmcore.similar import SimilarCase

MODALITY_LABELS = {"image": "Image only", "text": "Note only", "fused": "Image + note"}
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "ig": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "Occlusion",
}
WITHHELD = (
    "Scores withheld: the inputs are outside what this model knows, so its scores would mean nothing. "
    "They are included only when explicitly asked for."
)
SHOWN_ON_REQUEST = "Shown on request: these scores come from a model that has not learned from inputs like these."
NOT_SIMILAR = (
    "These cases are the nearest only in the model's own space, which this input does not belong to: they are not "
    "similar in any clinical sense."
)
PAGE = A4
MARGIN = 16 * mm
FOOTER = 20 * mm  # room at the foot of every page for the disclaimer
INK, MUTED, ALERT, OK = (
    colors.HexColor("#1b1b1b"),
    colors.HexColor("#5a5a5a"),
    colors.HexColor("#b00020"),
    colors.HexColor("#1b5e20"),
)

_TIGHT = frozenset(".,;:!?)%")  # punctuation the attributions list as words of their own, set without a space
_FONTS_LOCK = threading.Lock()


def _fonts() -> tuple[str, str]:
    """(regular, bold) font names: DejaVu Sans from matplotlib's data (any Latin, Greek or Cyrillic note prints), else
    the PDF's built-in Helvetica."""
    with _FONTS_LOCK:
        if "DejaVuSans" in pdfmetrics.getRegisteredFontNames():
            return "DejaVuSans", "DejaVuSans-Bold"
        try:
            import matplotlib

            folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
            pdfmetrics.registerFont(TTFont("DejaVuSans", str(folder / "DejaVuSans.ttf")))
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(folder / "DejaVuSans-Bold.ttf")))
            # <b> in a paragraph looks the bold face up by family
            registerFontFamily("DejaVuSans", "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans", "DejaVuSans-Bold")
            return "DejaVuSans", "DejaVuSans-Bold"
        except (ImportError, OSError):
            return "Helvetica", "Helvetica-Bold"


def _styles() -> dict[str, ParagraphStyle]:
    regular, bold = _fonts()
    base = ParagraphStyle("body", fontName=regular, fontSize=9, leading=12, textColor=INK, alignment=TA_LEFT)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=7.5, leading=9.5, textColor=MUTED),
        "title": ParagraphStyle("title", parent=base, fontName=bold, fontSize=16, leading=20, spaceAfter=2),
        "h2": ParagraphStyle("h2", parent=base, fontName=bold, fontSize=11.5, leading=15, spaceBefore=8, spaceAfter=3),
        "alert": ParagraphStyle("alert", parent=base, fontName=bold, fontSize=10.5, leading=14, textColor=ALERT),
        "ok": ParagraphStyle("ok", parent=base, fontName=bold, fontSize=10.5, leading=14, textColor=OK),
        "mono": ParagraphStyle("mono", parent=base, fontName="Courier", fontSize=7.5, leading=9.5),
        "cell": ParagraphStyle("cell", parent=base, fontSize=8, leading=10),
        "bold": ParagraphStyle("bold", parent=base, fontName=bold),
    }


def _png(image: Image.Image, max_side: int | None = None) -> io.BytesIO:
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    buf.seek(0)
    return buf


def _picture(image: Image.Image, width: float, max_side: int = 900) -> PdfImage:
    """A PIL image as a flowable `width` points wide, aspect kept (embedded as PNG, at most max_side pixels)."""
    return PdfImage(_png(image, max_side), width=width, height=width * image.height / image.width)


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(text), style)


# ---- sections ---------------------------------------------------------------------------------------------------


def _verdict(prediction: Prediction, st: dict[str, ParagraphStyle]) -> list[Any]:
    check = prediction.check
    if check.in_distribution is None:
        return [
            _p(
                "No out-of-distribution gate: this model version cannot say whether these inputs are like the cases "
                "it learned from.",
                st["alert"],
            )
        ]
    if check.in_distribution is False:
        out = [_p("Outside what this model knows.", st["alert"])]
        out += [_p(reason, st["body"]) for reason in check.reasons]
        return out
    detail = []
    if check.ood_score is not None:
        detail.append(f"out-of-distribution score {check.ood_score:.3g}")
    if check.ood_threshold is not None:
        detail.append(f"threshold {check.ood_threshold:.3g}")
    said = f" ({', '.join(detail)})" if detail else ""
    return [_p(f"The inputs are like the cases this model learned from{said}.", st["ok"])]


def _scores(prediction: Prediction, shown: bool, st: dict[str, ParagraphStyle]) -> list[Any]:
    out: list[Any] = [_p("Model scores per modality", st["h2"])]
    if not shown:
        return [*out, _p(WITHHELD, st["alert"])]
    if prediction.in_distribution is False:
        out.append(_p(SHOWN_ON_REQUEST, st["alert"]))
    top = prediction.top[0]
    out.append(
        Paragraph(
            f"Top class ({escape(MODALITY_LABELS[prediction.modality].lower())}): <b>{escape(top.name)}</b> "
            f"{top.probability:.0%}, which ISIC files as {escape(top.malignancy)}. "
            + ("Calibrated scores" if prediction.calibrated else "Uncalibrated scores")
            + ", not probabilities of disease.",
            st["body"],
        )
    )
    modalities = [m for m in ("image", "text", "fused") if prediction.probabilities.get(m)]
    ranking = prediction.probabilities[prediction.modality] or {}
    rows: list[list[Any]] = [["class", *[MODALITY_LABELS[m] for m in modalities]]]
    for dx in sorted(ranking, key=lambda c: -ranking[c]):
        rows.append([DX_NAMES.get(dx, dx), *[f"{prediction.probabilities[m][dx]:.0%}" for m in modalities]])
    out += [Spacer(1, 3), _table(rows, [62 * mm] + [30 * mm] * len(modalities), st)]
    if prediction.warnings:
        out.append(Spacer(1, 3))
        out += [_p(f"Warning: {w}", st["small"]) for w in prediction.warnings]
    return out


def _table(rows: list[list[Any]], widths: list[float], st: dict[str, ParagraphStyle], header: bool = True) -> Table:
    cells = [[c if not isinstance(c, str) else _p(c, st["cell"]) for c in row] for row in rows]
    table = Table(cells, colWidths=widths, hAlign="LEFT")
    style = [
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#d0d0d0")),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")))
    table.setStyle(TableStyle(style))
    return table


def _images(explanation: Explanation | None, opacity: float, shown: bool, st: dict[str, ParagraphStyle]) -> list[Any]:
    if explanation is None or explanation.image is None:
        return []
    side = (PAGE[0] - 2 * MARGIN - 8 * mm) / 2
    method = METHOD_LABELS.get(explanation.method, explanation.method)
    target = DX_NAMES.get(explanation.target, explanation.target)
    looked_for = f"for {target}" if shown else "for its top class (not named while the scores are withheld)"
    bar = explanation.colorbar()
    cells = [
        [_picture(explanation.image, side), _picture(explanation.overlay(opacity), side)],
        [
            _p("Photo (upright, as analysed)", st["small"]),
            [
                _picture(bar, side * 0.8),
                _p(f"{method}: where the model looked {looked_for}; outline: top 20%; low → high", st["small"]),
            ],
        ],
    ]
    table = Table(cells, colWidths=[side + 4 * mm, side + 4 * mm], hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    return [KeepTogether([_p("Where the model looked", st["h2"]), table])]


def _words(explanation: Explanation | None, shown: bool, st: dict[str, ParagraphStyle]) -> list[Any]:
    if explanation is None or not explanation.words:
        return []
    spans = []
    for i, (word, score) in enumerate(explanation.words):
        alpha = min(1.0, abs(score))
        base = (0, 150, 70) if score >= 0 else (200, 30, 30)  # the Diagnose page's green (towards) and red (away)
        tint = "#" + "".join(f"{round(255 - alpha * (255 - c)):02x}" for c in base)
        glue = "" if i == 0 or word in _TIGHT else " "  # "spot," and "8 mm." as typed, not "spot ," and "mm ."
        spans.append(f'{glue}<font backColor="{tint}">{escape(word)}</font>')
    target = DX_NAMES.get(explanation.target, explanation.target) if shown else "the top class"
    return [
        _p("Which words moved the note's score", st["h2"]),
        _p(
            f"Integrated Gradients: green towards {target}, red away; the stronger the shade, the larger the effect.",
            st["small"],
        ),
        Spacer(1, 2),
        Paragraph("".join(spans), ParagraphStyle("words", parent=st["body"], leading=14)),
    ]


def _findings(findings: list[FindingScore] | None, shown: bool, st: dict[str, ParagraphStyle]) -> list[Any]:
    if findings is None:  # no photo
        return []
    out: list[Any] = [_p("Findings the model sees", st["h2"])]
    if not shown:
        return [*out, _p("Withheld with the scores: they come from the same model.", st["alert"])]
    ranked = sorted(findings, key=lambda f: -f.score)
    calibrated = any(f.calibrated for f in findings)
    main = [f for f in ranked if f.calibrated] if calibrated else ranked  # zero-shot scores are not ranked with them
    listed = [f for f in main if not f.label.startswith("unlikely")]
    out.append(
        _p(
            "Scores from the model's shared image-text space: "
            + (
                "calibrated by a probe fitted on the training cases' recorded findings"
                if calibrated
                else "zero-shot prompt similarity, not calibrated"
            )
            + "; validation AUROC says how well each score separated the finding on held-out cases.",
            st["small"],
        )
    )
    if listed:
        rows: list[list[Any]] = [["finding", "score", "reads", "validation AUROC"]]
        for f in listed:
            rows.append([f.name, f"{f.score:.2f}", f.label, "-" if f.val_auroc is None else f"{f.val_auroc:.2f}"])
        out += [Spacer(1, 2), _table(rows, [58 * mm, 20 * mm, 40 * mm, 32 * mm], st)]
    unlikely = [f.name for f in main if f.label.startswith("unlikely")]
    if unlikely:
        out.append(_p("Unlikely (score below 0.3): " + ", ".join(unlikely) + ".", st["small"]))
    zero_shot = [f for f in ranked if not f.calibrated] if calibrated else []
    if zero_shot:
        scores = ", ".join(f"{f.name} {f.score:.2f}" for f in zero_shot)
        out.append(
            _p(
                f"Zero-shot only (too few training cases for a probe; uncalibrated, less reliable): {scores}.",
                st["small"],
            )
        )
    return [KeepTogether(out)]  # never a heading alone at the foot of a page


def _thumbnail(case: SimilarCase, side: float) -> Any:
    if case.image_path is None:
        return "(no image)"
    try:
        with Image.open(case.image_path) as im:
            im.load()
            return _picture(im.convert("RGB"), side, max_side=160)
    except OSError:
        return "(image unreadable)"


def _similar(
    similar: list[SimilarCase] | None, unavailable: str, prediction: Prediction, st: dict[str, ParagraphStyle]
) -> list[Any]:
    out: list[Any] = [_p("Similar past cases", st["h2"])]
    if similar is None:
        return [*out, _p(unavailable or "Similar cases are not available.", st["body"])]
    if not similar:
        return [*out, _p("The case library has no matching cases.", st["body"])]
    if prediction.in_distribution is False:
        out.append(_p(NOT_SIMILAR, st["alert"]))
    rows: list[list[Any]] = [["", "diagnosis", "similarity", "details"]]
    for case in similar:
        meta = case.metadata
        details = [
            f"{meta['age']:.0f} y" if meta.get("age") is not None else "",
            meta.get("sex") or "",
            meta.get("site") if meta.get("site") not in (None, "unknown") else "",
            f"Fitzpatrick {meta['fitzpatrick']}" if meta.get("fitzpatrick") else "",
            f"{meta['domain']} view" if meta.get("domain") else "",
        ]
        near = f"cosine {case.score:.2f}"
        if case.percentile is not None:  # the page's wording: the raw cosine sits near 1 for everything
            near = f"nearer than {case.percentile:.0f}% of library neighbours ({near})"
        described = Paragraph(
            escape(", ".join(d for d in details if d)) + f'<br/><font size="6.5">{escape(case.case_id)}</font>',
            st["cell"],
        )
        rows.append([_thumbnail(case, 20 * mm), f"{case.name} ({case.malignancy})", near, described])
    return [KeepTogether([*out, _table(rows, [23 * mm, 45 * mm, 45 * mm, 65 * mm], st)])]


def _model(predictor: Predictor, prediction: Prediction, st: dict[str, ParagraphStyle]) -> list[Any]:
    card = predictor.card
    out: list[Any] = [
        _p("Model and inputs", st["h2"]),
        Paragraph(f"<b>Trained on:</b> {escape(card.trained_on or 'not recorded')}", st["body"]),
        Paragraph(f"<b>Model version:</b> {escape(prediction.model_version)}", st["body"]),
        Paragraph(f"<b>Intended use:</b> {escape(card.intended_use)}", st["body"]),
    ]
    towers = ", ".join(
        f"{kind}: {t.name}{' (pretrained)' if t.pretrained else ''}" for kind, t in card.encoders.items()
    )
    if towers:
        out.append(Paragraph(f"<b>Encoders:</b> {escape(towers)}", st["body"]))
    head = card.headline
    if head is not None:
        scores = "; ".join(
            f"{MODALITY_LABELS.get(m, m)} {s.balanced_accuracy:.3f}"
            for m, s in head.modalities.items()
            if s.balanced_accuracy is not None
        )
        out.append(
            Paragraph(
                f"<b>Evaluation:</b> {escape(head.split)} split, {head.n} cases, {escape(head.text_strategy)} notes; "
                f"balanced accuracy {escape(scores or 'not recorded')}",
                st["body"],
            )
        )
    else:
        out.append(Paragraph("<b>Evaluation:</b> none recorded for this version.", st["body"]))
    temps = card.calibration.get("temperatures") if card.calibration else None
    calibration = ", ".join(f"{m} {t:.2f}" for m, t in temps.items()) if temps else "not calibrated"
    out.append(Paragraph(f"<b>Calibration (temperature per modality):</b> {escape(calibration)}", st["body"]))
    gate = ", ".join(f"{m}: {_gate(m, v)}" for m, v in card.ood.items()) if card.ood else "none"
    out.append(Paragraph(f"<b>Out-of-distribution gate:</b> {escape(gate)}", st["body"]))
    findings = card.extra.get("findings") if isinstance(card.extra, dict) else None
    if findings:
        mean = findings.get("val_auroc_mean")
        text = f"probe on {findings.get('fitted_on', '?')}" + (f"; mean validation AUROC {mean:.2f}" if mean else "")
        out.append(Paragraph(f"<b>Findings:</b> {escape(text)}", st["body"]))
    out += [
        Spacer(1, 3),
        _p("SHA-256 of the inputs", st["bold"]),
        _p(f"photo (decoded pixels): {prediction.image_sha256 or 'none'}", st["mono"]),
        _p(f"note (UTF-8 text): {prediction.note_sha256 or 'none'}", st["mono"]),
    ]
    return out


def _gate(modality: str, part: dict[str, Any]) -> str:
    """A modality's out-of-distribution gate in words (the note gate's card names no method: mmcore.ood.NoteOOD)."""
    if part.get("method"):
        return str(part["method"])
    if modality == "note":
        return f"known words and {part.get('k', '?')}-nearest training notes"
    return "fitted"


def _footer(version: str) -> Any:
    regular, _ = _fonts()

    def draw(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        width = PAGE[0] - 2 * MARGIN
        style = ParagraphStyle("foot", fontName=regular, fontSize=7, leading=8.5, textColor=MUTED)
        text = Paragraph(
            f"<b>Research use only.</b> {escape(DISCLAIMER)} Model {escape(version)}. Page {doc.page}.", style
        )
        _, h = text.wrap(width, FOOTER)
        canvas.setStrokeColor(colors.HexColor("#d0d0d0"))
        canvas.line(MARGIN, MARGIN + h + 3, PAGE[0] - MARGIN, MARGIN + h + 3)
        text.drawOn(canvas, MARGIN, MARGIN)
        canvas.restoreState()

    return draw


# ---- the report ---------------------------------------------------------------------------------------------------


def consult_pdf(
    predictor: Predictor,
    image_bytes: bytes | None,
    note: str | None = None,
    *,
    user: str,
    method: str = "gradcam",
    target: str | None = None,
    show_scores_anyway: bool = False,
    metadata: dict[str, Any] | None = None,
    prediction: Prediction | None = None,
    similar: list[SimilarCase] | None = None,
    opacity: float = 0.45,
    k: int = 4,
) -> bytes:
    """One analysis of a photo and/or note as a PDF consult report; the export is audited with its user.

    prediction, similar: the page's own results, reused (no second prediction, audit entry or search; the first `k`
    similar cases are shown); None computes them here. method, target (None: the predicted class), opacity: the
    explanation the page shows (its cached one is reused). Scores and findings of out-of-distribution inputs are
    withheld unless `show_scores_anyway`, as on the Diagnose page.
    """
    from mmcore.explain_findings import score_findings
    from mmcore.similar import RetrievalUnavailable

    if prediction is None:
        prediction = predictor.predict(image_bytes, note, metadata, user=user)
    note = note if prediction.note_sha256 else None  # a note the prediction set aside is not explained either
    shown = prediction.in_distribution is not False or show_scores_anyway
    explanation = predictor.explain(image_bytes, note, method=method, target=target)
    findings = score_findings(predictor, image_bytes) if image_bytes is not None else None
    unavailable = ""
    if similar is not None:
        similar = similar[:k]
    elif k > 0:
        try:
            similar = predictor.similar(image_bytes, note, k=k)
        except RetrievalUnavailable as e:
            unavailable = str(e)

    st = _styles()
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    story: list[Any] = [
        _p("mmderm consult report (research use only)", st["title"]),
        _p(f"Exported {created} by {user or 'unknown user'}; model {prediction.model_version}.", st["small"]),
        Spacer(1, 4),
        *_verdict(prediction, st),  # whether the inputs are like the training data comes before anything else
        Spacer(1, 2),
        *_scores(prediction, shown, st),
        *_images(explanation, opacity, shown, st),
        *_words(explanation, shown, st),
        *_findings(findings, shown, st),
        *(_similar(similar, unavailable, prediction, st) if k > 0 else []),
        *_model(predictor, prediction, st),
    ]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=PAGE,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + FOOTER,
        title="mmderm consult report",
        author="mmderm (research software)",
        subject=DISCLAIMER,
        creator="mmderm",
        invariant=1,  # no random document id: the same analysis renders the same bytes but for the time stamp
    )
    footer = _footer(prediction.model_version)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    pdf = buf.getvalue()
    AuditLog(predictor.cfg.audit_path).append(
        "export",
        user,
        model_version=prediction.model_version,
        image_sha256=prediction.image_sha256,
        note_sha256=prediction.note_sha256,
        format="pdf",
        report_sha256=hashlib.sha256(pdf).hexdigest(),
        in_distribution=prediction.in_distribution,
        scores_shown=shown,
        method=method,
    )
    return pdf
