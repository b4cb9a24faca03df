"""Exports: a one-page PDF per case (ReportLab) and a CSV of the filtered case history."""

import csv
import io
from xml.sax.saxutils import escape

from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image as PdfImage
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from classifier.overlay import lay_over

DISCLAIMER = (
    "Decision support, not a diagnosis. The probability comes from an automated classifier (VGG16) trained on "
    "dermoscopic images; it can be wrong, in particular for lesion types, skin types and devices under-represented "
    "in its training data. The decision threshold was set on validation data for about 90% sensitivity. Diagnosis "
    "and management remain the responsibility of the treating clinician; histopathology is the reference."
)
IMAGE_PX = 600  # longest side of the images embedded in the PDF


def _image(name, max_px=IMAGE_PX) -> Image.Image:
    with default_storage.open(name, "rb") as f, Image.open(f) as img:
        img.draft("RGB", (max_px, max_px))
        rgb = img.convert("RGB")
    rgb.thumbnail((max_px, max_px))
    return rgb


def _overlay(image: Image.Image, heatmap_name: str) -> Image.Image:
    """The image with its stored Grad-CAM overlay composited at 60% opacity."""
    with default_storage.open(heatmap_name, "rb") as f, Image.open(f) as heat:
        return lay_over(image, heat, 0.6)


def _flowable(img: Image.Image, width_mm: float) -> PdfImage:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    buf.seek(0)
    w = width_mm * mm
    return PdfImage(buf, width=w, height=w * img.height / img.width)


def case_pdf(case, generated_by) -> bytes:
    from skinweb.clinic.similar import differential_disagreement

    """One A4 page: who and where, the image and its heat map, the result and the clinician's feedback."""
    styles = getSampleStyleSheet()
    small = ParagraphStyle(
        "small", parent=styles["Normal"], fontSize=8, leading=10, textColor=colors.HexColor("#444444")
    )
    cell = ParagraphStyle("cell", parent=styles["Normal"], fontSize=9, leading=11)
    patient, lesion, p, f = case.lesion.patient, case.lesion, case.shown_prediction, case.feedback

    def rows_table(rows, widths=(45 * mm, 125 * mm)):
        data = [[Paragraph(f"<b>{escape(k)}</b>", cell), Paragraph(escape(str(v)), cell)] for k, v in rows]
        t = Table(data, colWidths=widths)
        t.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                    ("TOPPADDING", (0, 0), (-1, -1), 2),
                ]
            )
        )
        return t

    story = [
        Paragraph(f"skinweb case report · case {case.pk}", styles["Title"]),
        rows_table([
            ("Patient identifier", patient.identifier),
            ("Birth year, sex", f"{patient.birth_year}, {patient.get_sex_display()}"),
            ("Clinic", str(patient.clinic)),
            ("Lesion site", f"{lesion.get_site_display()}{' (' + lesion.label + ')' if lesion.label else ''}"),
            # Not the uploaded file's name: it can carry a patient's name.
            ("Image taken (uploaded)", f"{timezone.localtime(case.taken_at):%Y-%m-%d %H:%M} "
                                       f"({timezone.localtime(case.created_at):%Y-%m-%d %H:%M})"),
        ]),
        Spacer(1, 4 * mm),
    ]
    image = _image(case.image.name)
    pictures = [_flowable(image, 80)]
    captions = [Paragraph("Dermoscopic image", small)]
    if p is not None and p.heatmap:
        pictures.append(_flowable(_overlay(image, p.heatmap.name), 80))
        captions.append(Paragraph(f"Grad-CAM heat map: evidence for the decision ({escape(p.decision)})", small))
    grid = Table([pictures, captions], colWidths=[85 * mm] * len(pictures))
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [grid, Spacer(1, 4 * mm)]

    if case.result_withheld:
        story.append(Paragraph("AI result", styles["Heading3"]))
        story.append(rows_table([
            ("Result", "NONE: no AI result for this image"),
            ("Why", f"The image {case.withheld_reason}. The model was made for dermoscopic images of skin lesions; "
                    "on other pictures its probability means nothing, so no decision is given."),
            ("What to do", "Take the image again with a dermatoscope, the lesion centred, and upload it anew."),
        ]))
    elif p is not None:
        story.append(Paragraph("AI result", styles["Heading3"]))
        if case.score_released:
            story.append(Paragraph(
                escape(f"SCORE SHOWN ON REQUEST by {case.score_released_by or 'a clinician'} on "
                       f"{timezone.localtime(case.score_released_at):%Y-%m-%d %H:%M} "
                       f"(\"{case.score_release_reason}\"): the image {case.withheld_reason}, so this score may "
                       "mean nothing."), cell))
        story.append(rows_table([
            ("Result", f"BORDERLINE, leaning {p.decision}: the model is not sure either way" if p.borderline
             else p.decision),
            ("Probability of malignancy", f"{p.probability:.3f}"),
            ("Decision threshold", f"{p.threshold:.3f} (malignant at or above); borderline band "
                                   f"{p.band[0]:.2f}-{p.band[1]:.2f}"),
            ("What the threshold means", p.model_version.threshold_in_words),
            *([("Differential (AI, evidence beside the result)", differential_words(p))]
              if differential_words(p) else []),
            *([("Differential and decision disagree", differential_disagreement(p))]
              if differential_disagreement(p) else []),
            ("Model version", f"{p.model_version.version} (model file sha256 {p.model_version.sha256[:16]}…)"
             if p.model_version.sha256 else p.model_version.version),
            ("Classified", f"{timezone.localtime(p.created_at):%Y-%m-%d %H:%M}"),
            *([("Image check", "; ".join(case.warnings) + ": check the image before trusting its score")]
              if case.warnings else []),
        ]))
    else:
        story.append(Paragraph(f"No AI result ({escape(case.get_status_display())}).", styles["Normal"]))
    story.append(Paragraph("Clinician feedback", styles["Heading3"]))
    if f is not None:
        rows = [
            ("Agrees with the AI", agreement(f)),
            ("Clinical diagnosis", f.get_clinical_diagnosis_display()),
            ("Management", f.get_management_display()),
            (
                "Histopathology",
                (f.get_histopathology_result_display() or "not recorded")
                + (f" ({f.histopathology_date:%Y-%m-%d})" if f.histopathology_date else ""),
            ),
            (
                "Recorded by",
                f"{f.created_by or '—'}, {timezone.localtime(f.created_at):%Y-%m-%d %H:%M} (revision {f.revision})",
            ),
        ]
        if f.notes:
            rows.append(("Notes", f.notes))
        story.append(rows_table(rows))
    else:
        story.append(Paragraph("None recorded yet.", styles["Normal"]))
    story += [
        Spacer(1, 5 * mm),
        Paragraph(escape(DISCLAIMER), small),
        Spacer(1, 2 * mm),
        Paragraph(f"Generated {timezone.localtime():%Y-%m-%d %H:%M} by {escape(str(generated_by))}.", small),
    ]
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=14 * mm,
                            bottomMargin=12 * mm, title=f"skinweb case {case.pk}", author="skinweb")
    doc.build(story)
    return out.getvalue()


CSV_COLUMNS = [
    "case", "taken", "patient", "site", "lesion", "status", "probability", "threshold", "decision", "certainty",
    "band_low", "band_high", "model_version", "differential", "image_warnings", "result_withheld",
    "agrees_with_ai", "clinical_diagnosis", "management", "histopathology", "ground_truth",
]


def agreement(feedback) -> str:
    """Whether the clinician agreed with the AI's decision: yes, no, or that none was shown to agree with."""
    if feedback.agrees_with_ai is None:
        return "no AI decision shown"
    return "yes" if feedback.agrees_with_ai else "no"


def differential_words(prediction, percent: bool = True) -> str:
    """The prediction's differential on one line, most likely first ("" without one): "Melanoma 41%, Nevus
    33%, ..." for the report, "melanoma=0.4100; nevus=0.3300; ..." (class keys) for the CSV."""
    from skinweb.clinic.similar import differential_of, differential_probabilities

    if percent:
        return ", ".join(f"{label} {shown}" for label, _, shown in differential_of(prediction) or [])
    found = differential_probabilities(prediction) or {}
    return "; ".join(f"{k}={v:.4f}" for k, v in sorted(found.items(), key=lambda kv: -kv[1]))


def _safe(value) -> str:
    """Spreadsheet formula injection: a cell starting with = + - @ (or a tab/CR) is kept as text."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def case_rows(cases):
    yield CSV_COLUMNS
    for c in cases.iterator(chunk_size=500):
        p, f = c.shown_prediction, c.feedback
        certainty = p.certainty + (" (score on request)" if c.score_released else "") if p else ""
        yield [_safe(v) for v in (
            c.pk, timezone.localtime(c.taken_at).strftime("%Y-%m-%d %H:%M"), c.lesion.patient.identifier,
            c.lesion.get_site_display(), c.lesion.label, c.status,
            f"{p.probability:.4f}" if p else "", f"{p.threshold:.4f}" if p else "", p.decision if p else "",
            certainty, f"{p.band[0]:.4f}" if p else "", f"{p.band[1]:.4f}" if p else "",
            p.model_version.version if p else "", differential_words(p, percent=False) if p else "",
            "; ".join(c.warnings), c.withheld_reason if c.result_withheld else "",
            agreement(f) if f else "", f.clinical_diagnosis if f else "",
            f.management if f else "", f.histopathology_result if f else "", c.truth_label,
        )]


class Echo:
    def write(self, value):
        return value


def csv_lines(cases):
    writer = csv.writer(Echo())
    return (writer.writerow(row) for row in case_rows(cases))
