"""Exports: a one-page PDF per case (ReportLab) and a CSV of the filtered case history."""

import csv
import io
from xml.sax.saxutils import escape

from django.core.files.storage import default_storage
from django.utils import formats, timezone
from django.utils.translation import gettext, pgettext_lazy
from django.utils.translation import gettext_lazy as _
from PIL import Image
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image as PdfImage
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from classifier.overlay import lay_over

DISCLAIMER = _(
    "Decision support, not a diagnosis. The probability comes from an automated classifier (VGG16) trained on "
    "dermoscopic images; it can be wrong, in particular for lesion types, skin types and devices under-represented "
    "in its training data. The decision threshold was set on validation data for a sensitivity of about 90%. Diagnosis "
    "and management remain the responsibility of the treating clinician; histopathology is the reference."
)
IMAGE_PX = 600  # longest side of the images embedded in the PDF


def when(moment) -> str:
    """A date and time in the reader's format (the clinic's time zone)."""
    return formats.date_format(timezone.localtime(moment), "SHORT_DATETIME_FORMAT")


def number(value, places: int) -> str:
    """A decimal in the reader's format (0.184 or 0,184), rounded as the pages round it (number_format alone
    cuts the digits off)."""
    return formats.number_format(round(value, places), places)


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
    """One A4 page: who and where, the image and its heat map, the result and the clinician's feedback, in
    the active language (the reader's)."""
    from skinweb.clinic.similar import differential_disagreement

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
        Paragraph(escape(gettext("skinweb case report · case %(pk)s") % {"pk": case.pk}), styles["Title"]),
        rows_table([
            (gettext("Patient identifier"), patient.identifier),
            (gettext("Birth year, sex"), f"{patient.birth_year}, {patient.get_sex_display()}"),
            (gettext("Clinic"), str(patient.clinic)),
            (gettext("Lesion site"), f"{lesion.get_site_display()}{' (' + lesion.label + ')' if lesion.label else ''}"),
            # Not the uploaded file's name: it can carry a patient's name.
            (gettext("Image taken (uploaded)"), f"{when(case.taken_at)} ({when(case.created_at)})"),
        ]),
        Spacer(1, 4 * mm),
    ]
    image = _image(case.image.name)
    pictures = [_flowable(image, 80)]
    captions = [Paragraph(escape(gettext("Dermoscopic image")), small)]
    if p is not None and p.heatmap:
        pictures.append(_flowable(_overlay(image, p.heatmap.name), 80))
        captions.append(Paragraph(escape(gettext("Grad-CAM heat map: evidence for the decision (%(decision)s)")
                                         % {"decision": p.decision_display}), small))
    grid = Table([pictures, captions], colWidths=[85 * mm] * len(pictures))
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [grid, Spacer(1, 4 * mm)]

    if case.result_withheld:
        story.append(Paragraph(escape(gettext("AI result")), styles["Heading3"]))
        story.append(rows_table([
            (gettext("Result"), gettext("NONE: no AI result for this image")),
            (gettext("Why"), gettext("The image %(reason)s. The model was made for dermoscopic images of skin lesions; "
                                     "on other pictures its probability means nothing, so no decision is given.")
             % {"reason": case.withheld_reason_shown}),
            (gettext("What to do"), gettext("Take the image again with a dermatoscope, the lesion centred, and upload "
                                            "it anew.")),
        ]))
    elif p is not None:
        story.append(Paragraph(escape(gettext("AI result")), styles["Heading3"]))
        if case.score_released:
            story.append(Paragraph(escape(gettext(
                "SCORE SHOWN ON REQUEST by %(who)s on %(when)s (\"%(why)s\"): the image %(reason)s, so this score may "
                "mean nothing.") % {"who": case.score_released_by or gettext("a clinician"),
                                    "when": when(case.score_released_at), "why": case.score_release_reason,
                                    "reason": case.withheld_reason_shown}), cell))
        story.append(rows_table([
            (gettext("Result"), gettext("BORDERLINE, leaning %(decision)s: the model is not sure either way")
             % {"decision": p.decision_display} if p.borderline else p.decision_display),
            (gettext("Probability of malignancy"), number(p.probability, 3)),
            (gettext("Decision threshold"), gettext("%(threshold)s (malignant at or above); borderline band "
                                                    "%(low)s-%(high)s") % {
                "threshold": number(p.threshold, 3), "low": number(p.band[0], 2), "high": number(p.band[1], 2)}),
            (gettext("What the threshold means"), p.model_version.threshold_in_words),
            *([(gettext("Differential (AI, evidence beside the result)"), differential_words(p))]
              if differential_words(p) else []),
            *([(gettext("Differential and decision disagree"), differential_disagreement(p))]
              if differential_disagreement(p) else []),
            (gettext("Model version"), gettext("%(version)s (model file sha256 %(sha)s…)") % {
                "version": p.model_version.version, "sha": p.model_version.sha256[:16]}
             if p.model_version.sha256 else p.model_version.version),
            (gettext("Classified"), when(p.created_at)),
            *([(gettext("Image check"), gettext("%(warnings)s: check the image before trusting its score") % {
                "warnings": "; ".join(case.warnings_shown)})] if case.warnings else []),
        ]))
    else:
        story.append(Paragraph(escape(gettext("No AI result (%(status)s).") % {"status": case.get_status_display()}),
                               styles["Normal"]))
    story.append(Paragraph(escape(gettext("Clinician feedback")), styles["Heading3"]))
    if f is not None:
        rows = [
            (gettext("Agrees with the AI"), f.agreement_display),
            (gettext("Clinical diagnosis"), f.get_clinical_diagnosis_display()),
            (gettext("Management"), f.get_management_display()),
            (
                gettext("Histopathology"),
                (f.get_histopathology_result_display() or gettext("not recorded"))
                + (f" ({formats.date_format(f.histopathology_date, 'SHORT_DATE_FORMAT')})"
                   if f.histopathology_date else ""),
            ),
            (
                gettext("Recorded by"),
                gettext("%(who)s, %(when)s (revision %(revision)s)") % {
                    "who": f.created_by or "—", "when": when(f.created_at), "revision": f.revision},
            ),
        ]
        if f.notes:
            rows.append((gettext("Notes"), f.notes))
        story.append(rows_table(rows))
    else:
        story.append(Paragraph(escape(gettext("None recorded yet.")), styles["Normal"]))
    story += [
        Spacer(1, 5 * mm),
        Paragraph(escape(str(DISCLAIMER)), small),
        Spacer(1, 2 * mm),
        Paragraph(escape(gettext("Generated %(when)s by %(who)s.") % {"when": when(timezone.now()),
                                                                       "who": generated_by}),
                  small),
    ]
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=14 * mm,
                            bottomMargin=12 * mm, title=gettext("skinweb case %(pk)s") % {"pk": case.pk},
                            author="skinweb")
    doc.build(story)
    return out.getvalue()


# The CSV's headers in the reader's language; its values stay machine-readable (codes, ISO dates, decimal
# points) but for the words a person wrote or reads (site, lesion, warnings, withheld reason, agreement).
CSV_COLUMNS = [
    pgettext_lazy("CSV column", "case"),
    pgettext_lazy("CSV column", "taken"),
    pgettext_lazy("CSV column", "patient"),
    pgettext_lazy("CSV column", "site"),
    pgettext_lazy("CSV column", "lesion"),
    pgettext_lazy("CSV column", "status"),
    pgettext_lazy("CSV column", "probability"),
    pgettext_lazy("CSV column", "threshold"),
    pgettext_lazy("CSV column", "decision"),
    pgettext_lazy("CSV column", "certainty"),
    pgettext_lazy("CSV column", "band_low"),
    pgettext_lazy("CSV column", "band_high"),
    pgettext_lazy("CSV column", "model_version"),
    pgettext_lazy("CSV column", "differential"),
    pgettext_lazy("CSV column", "image_warnings"),
    pgettext_lazy("CSV column", "result_withheld"),
    pgettext_lazy("CSV column", "agrees_with_ai"),
    pgettext_lazy("CSV column", "clinical_diagnosis"),
    pgettext_lazy("CSV column", "management"),
    pgettext_lazy("CSV column", "histopathology"),
    pgettext_lazy("CSV column", "ground_truth"),
]


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
    yield [str(column) for column in CSV_COLUMNS]
    for c in cases.iterator(chunk_size=500):
        p, f = c.shown_prediction, c.feedback
        certainty = p.certainty + (gettext(" (score on request)") if c.score_released else "") if p else ""
        yield [_safe(v) for v in (
            c.pk, timezone.localtime(c.taken_at).strftime("%Y-%m-%d %H:%M"), c.lesion.patient.identifier,
            c.lesion.get_site_display(), c.lesion.label, c.status,
            f"{p.probability:.4f}" if p else "", f"{p.threshold:.4f}" if p else "", p.decision if p else "",
            certainty, f"{p.band[0]:.4f}" if p else "", f"{p.band[1]:.4f}" if p else "",
            p.model_version.version if p else "", differential_words(p, percent=False) if p else "",
            "; ".join(c.warnings_shown), c.withheld_reason_shown if c.result_withheld else "",
            f.agreement_display if f else "", f.clinical_diagnosis if f else "",
            f.management if f else "", f.histopathology_result if f else "", c.truth_label,
        )]


class Echo:
    def write(self, value):
        return value


def csv_lines(cases):
    writer = csv.writer(Echo())
    return (writer.writerow(row) for row in case_rows(cases))
