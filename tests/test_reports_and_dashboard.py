"""The PDF report, the CSV export, the clinic dashboard's agreement figures, the lesion timeline and
the uploader's JSON answers."""

import csv
import io
import json
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from pypdf import PdfReader

from skinweb.audit.models import AuditEvent
from skinweb.clinic import classification, explanations, insights
from skinweb.clinic.models import Case, Prediction
from skinweb.clinic.reports import _safe
from skinweb.models_registry.models import ModelVersion
from tests.builders import image_bytes, make_case, make_clinic, make_lesion, make_patient, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def north(north, alice):
    """North and alice, logged in."""
    return north, alice


def classified(lesion, user, probability=None, decision=None, when=None, version=None):
    case = make_case(lesion, user)
    classification.classify_case(case.pk)
    case.refresh_from_db()
    fields = {}
    if probability is not None:
        fields["probability"] = probability
    if decision is not None:
        fields["decision"] = decision
    if version is not None:
        fields["model_version"] = version
    if fields:
        Prediction.objects.filter(pk=case.prediction_id).update(**fields)
    if when is not None:
        Case.objects.filter(pk=case.pk).update(created_at=when, taken_at=when)
    return Case.objects.get(pk=case.pk)


FEEDBACK = dict(agrees_with_ai=True, clinical_diagnosis="nevus", management="monitor", histopathology_result="",
                histopathology_date=None, notes="")


def test_pdf_report_holds_the_case(client, north, published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic, "PDF-0042"), site="upper extremity", label="left forearm")
    case = classified(lesion, alice)
    explanations.explain_predictions([case.prediction_id])
    case.record_feedback(alice, **{**FEEDBACK, "notes": "Re-check in 3 months"})
    response = client.get(reverse("clinic:case_report", args=[case.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert f"skinweb-case-{case.pk}.pdf" in response["Content-Disposition"]
    reader = PdfReader(io.BytesIO(response.content))
    assert len(reader.pages) == 1
    text = " ".join(reader.pages[0].extract_text().split())
    p = Prediction.objects.get(pk=case.prediction_id)
    for expected in ("PDF-0042", "left forearm", p.decision, f"{p.probability:.3f}", f"{p.threshold:.3f}",
                     published_model.version, "Nevus", "Monitor", "Re-check in 3 months", "not a diagnosis",
                     "Grad-CAM heat map"):
        assert expected in text, expected
    images = reader.pages[0].images
    assert len(images) == 2  # the image and the image with its heat map
    assert AuditEvent.objects.filter(action="export_pdf", object_id=str(case.pk), user=alice).exists()


def test_pdf_of_a_failed_case_says_there_is_no_result(client, north):
    clinic, alice = north
    case = make_case(make_lesion(make_patient(clinic)), alice, status=Case.Status.FAILED, failure_reason="x")
    text = (
        PdfReader(io.BytesIO(client.get(reverse("clinic:case_report", args=[case.pk])).content)).pages[0].extract_text()
    )
    assert "No AI result" in text and "None recorded yet" in text


def test_csv_export_follows_the_filters_and_defuses_formulas(client, north, published_model):
    clinic, alice = north
    sneaky = make_lesion(make_patient(clinic, "=HYPERLINK(1)"))
    plain = make_lesion(make_patient(clinic, "P-2"))
    a = classified(sneaky, alice)
    b = classified(plain, alice)
    a.record_feedback(alice, **FEEDBACK)
    other = make_lesion(make_patient(make_clinic("South"), "S-1"))
    make_case(other)
    response = client.get(reverse("clinic:case_export"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {r["case"] for r in rows} == {str(a.pk), str(b.pk)}  # another clinic's case never appears
    by_case = {r["case"]: r for r in rows}
    assert by_case[str(a.pk)]["patient"] == "'=HYPERLINK(1)"
    assert by_case[str(a.pk)]["agrees_with_ai"] == "yes" and by_case[str(b.pk)]["agrees_with_ai"] == ""
    assert float(by_case[str(b.pk)]["probability"]) == pytest.approx(b.prediction.probability, abs=1e-4)
    filtered = client.get(reverse("clinic:case_export") + "?feedback=missing")
    rows = list(csv.DictReader(io.StringIO(b"".join(filtered.streaming_content).decode())))
    assert [r["case"] for r in rows] == [str(b.pk)]
    event = AuditEvent.objects.filter(action="export_csv").latest("at")
    assert event.detail == {"filters": {"feedback": "missing"}, "rows": 1}


def test_safe_cells():
    assert _safe("=1+1") == "'=1+1" and _safe("-3") == "'-3" and _safe("@x") == "'@x" and _safe("ok") == "ok"
    assert _safe(None) == "" and _safe(0.5) == "0.5"


def test_wilson_interval():
    low, high = insights.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert insights.wilson(0, 0) is None and insights.wilson(0, 5)[0] == 0.0


def test_dashboard_agreement_per_version_counts_by_hand(client, north, published_model):
    """Six confirmed cases for v1: 3 malignant (AI finds 2, clinicians 3), 3 benign (AI clears 1,
    clinicians 2); one unconfirmed case with disagreeing feedback; one case of an older version."""
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic))
    truth = [("melanoma", "malignant", "melanoma"), ("basal_cell_carcinoma", "malignant", "melanoma"),
             ("melanoma", "benign", "melanoma"), ("nevus", "malignant", "nevus"), ("nevus", "malignant", "melanoma"),
             ("seborrheic_keratosis", "benign", "nevus")]
    for histo, ai, doctor in truth:
        case = classified(lesion, alice, decision=ai)
        case.record_feedback(alice, **{**FEEDBACK, "agrees_with_ai": (ai == "malignant") == (doctor == "melanoma"),
                                       "clinical_diagnosis": doctor, "histopathology_result": histo})
    unconfirmed = classified(lesion, alice, decision="benign")
    unconfirmed.record_feedback(alice, **{**FEEDBACK, "agrees_with_ai": False})
    old = ModelVersion.objects.create(version="v0-old", filename="old.safetensors", arch="vgg16", input_size=64,
                                      threshold=0.5, status=ModelVersion.Status.RETIRED)
    ModelVersion.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))
    classified(lesion, alice, version=old)
    classified(make_lesion(make_patient(make_clinic("South"))), None)  # another clinic: not counted

    rows = insights.agreement_by_version(Case.objects.visible_to(alice))
    assert [r["version"] for r in rows] == [published_model.version, "v0-old"]
    v1 = rows[0]
    assert v1["classified"] == 7 and v1["feedback"] == 7
    assert (v1["confirmed_malignant"], v1["confirmed_benign"]) == (3, 3)
    assert (v1["ai_sensitivity"].k, v1["ai_sensitivity"].n) == (2, 3)
    assert (v1["ai_specificity"].k, v1["ai_specificity"].n) == (1, 3)
    assert (v1["clinician_sensitivity"].k, v1["clinician_sensitivity"].n) == (3, 3)
    assert (v1["clinician_specificity"].k, v1["clinician_specificity"].n) == (2, 3)
    assert (v1["clinician_agrees"].k, v1["clinician_agrees"].n) == (4, 7)
    assert rows[1]["classified"] == 1 and rows[1]["ai_sensitivity"].n == 0

    page = client.get(reverse("clinic:dashboard")).content.decode()
    assert "0.67" in page and "(2/3;" in page and "v0-old" in page and "no cases" in page
    assert 'data-testid="n-waiting">1<' in page  # the old version's case has no feedback


def test_dashboard_lists_cases_waiting_for_review(client, north, published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic, "WAIT-1"))
    waiting = classified(lesion, alice)
    reviewed = classified(lesion, alice)
    reviewed.record_feedback(alice, **FEEDBACK)
    response = client.get(reverse("clinic:dashboard"))
    waiting_list = response.context["waiting"]
    assert [c.pk for c in waiting_list] == [waiting.pk] and response.context["n_waiting"] == 1


def test_timeline_orders_visits_and_flags_rises(client, north, published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic))
    start = timezone.now() - timedelta(days=400)
    t = published_model.threshold
    probabilities = [0.10, 0.15, t + 0.02, t - 0.20, t - 0.05]  # +0.05: no; crosses: yes; falls; +0.15: yes
    for i, p in enumerate(reversed(probabilities)):  # created newest first: the timeline must sort them
        classified(lesion, alice, probability=p, when=start + timedelta(days=90 * (len(probabilities) - 1 - i)))
    cases = lesion.cases.select_related("prediction", "feedback").order_by("created_at", "pk")
    tl = insights.timeline(cases)
    assert [round(v.probability, 4) for v in tl["visits"]] == [round(p, 4) for p in probabilities]
    assert [v.rise is not None for v in tl["points"]] == [False, False, True, False, True]
    ys = [v.y for v in tl["points"]]
    assert ys[2] < ys[1] < ys[0]  # higher probability, higher on the chart (smaller y)
    page = client.get(reverse("clinic:lesion_detail", args=[lesion.pk])).content.decode()
    assert 'data-testid="rise"' in page and "<polyline" in page and page.count("timeline-visit") == 5


def test_images_taken_the_same_day_are_one_visit_summarised_by_their_highest_probability(client, north,
                                                                                        published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic))
    first_day = timezone.now() - timedelta(days=100)
    t = published_model.threshold
    # Two images minutes apart at the first visit (0.10 and t + 0.05), one at a later visit (t + 0.08):
    # comparing images of one visit would flag a "rise" of t - 0.05; comparing visits, only +0.03.
    classified(lesion, alice, probability=0.10, when=first_day)
    classified(lesion, alice, probability=t + 0.05, when=first_day + timedelta(minutes=2))
    classified(lesion, alice, probability=t + 0.08, when=first_day + timedelta(days=90))
    tl = insights.timeline(lesion.cases.select_related("prediction", "feedback"))
    assert [len(v.cases) for v in tl["visits"]] == [2, 1]
    assert [round(v.probability, 4) for v in tl["visits"]] == [round(t + 0.05, 4), round(t + 0.08, 4)]
    assert tl["rises"] == []
    page = client.get(reverse("clinic:lesion_detail", args=[lesion.pk])).content.decode()
    assert page.count("timeline-visit") == 2 and "2 images" in page and 'data-testid="rise"' not in page
    assert "2 visits" in page


def test_the_camera_date_sets_the_visit_and_a_wrong_date_can_be_corrected(client, north, published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic))
    img = Image.open(io.BytesIO(image_bytes()))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2024:03:05 10:20:30"  # DateTimeOriginal
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("cam.jpg", out.getvalue())]})
    client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("plain.jpg")]})
    cam, plain = Case.objects.order_by("pk")
    assert timezone.localtime(cam.taken_at).strftime("%Y-%m-%d %H:%M:%S") == "2024-03-05 10:20:30"
    assert abs((plain.taken_at - plain.created_at).total_seconds()) < 5  # no camera date: the upload's
    r = client.post(reverse("clinic:case_taken", args=[plain.pk]), {"taken_on": "2024-03-05"})
    assert r.status_code == 302
    plain.refresh_from_db()
    assert timezone.localdate(plain.taken_at).isoformat() == "2024-03-05"
    event = AuditEvent.objects.get(action="correct_taken_at")
    assert event.detail["new"].startswith("2024-03-05") and event.detail["old"] != event.detail["new"]
    tl = insights.timeline(lesion.cases.select_related("prediction", "feedback"))
    assert [len(v.cases) for v in tl["visits"]] == [2]  # now one visit
    future = (timezone.localdate() + timedelta(days=2)).isoformat()
    client.post(reverse("clinic:case_taken", args=[plain.pk]), {"taken_on": future})
    plain.refresh_from_db()
    assert timezone.localdate(plain.taken_at).isoformat() == "2024-03-05"  # refused, unchanged


def test_the_lesion_timeline_refreshes_itself_while_images_are_pending(client, north, published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic))
    url = reverse("clinic:lesion_detail", args=[lesion.pk]) + "?part=timeline"
    empty = client.get(url).content.decode()
    assert 'id="lesion-timeline"' in empty and "every 2s" not in empty and "skinweb:uploaded" in empty
    assert "<html" not in empty and "No images yet" in empty
    case = make_case(lesion, alice)  # queued
    assert "every 2s" in client.get(url).content.decode()
    classification.classify_case(case.pk)
    done = client.get(url).content.decode()
    assert "every 2s" not in done and "every 30s" in done and f"Open case {case.pk}" in done
    assert not AuditEvent.objects.filter(action="view", object_type="lesion").exists()  # polls are not page views


def test_the_patient_page_shows_new_images_and_results_as_they_arrive(client, north, published_model):
    clinic, alice = north
    patient = make_patient(clinic)
    lesion = make_lesion(patient, label="left shin")
    page = client.get(reverse("clinic:patient_detail", args=[patient.pk])).content.decode()
    assert 'id="patient-lesions"' in page and "every 30s" in page and "No images yet" in page
    url = reverse("clinic:patient_detail", args=[patient.pk]) + "?part=lesions"
    case = make_case(lesion, alice, taken_at=timezone.make_aware(datetime(2025, 4, 2, 10, 0)))  # from elsewhere
    part = client.get(url).content.decode()
    assert "<html" not in part and "every 2s" in part and f"/cases/{case.pk}/" in part and "2025-04-02" in part
    classification.classify_case(case.pk)
    case.refresh_from_db()
    done = client.get(url).content.decode()
    assert "every 30s" in done and f"{case.prediction.probability:.2f}" in done
    assert AuditEvent.objects.filter(action="view", object_type="patient").count() == 1  # the page, not its polls


def test_uploader_json_answers_per_file(client, north, published_model):
    clinic, alice = north
    lesion = make_lesion(make_patient(clinic))
    url = reverse("clinic:lesion_upload", args=[lesion.pk])
    ok = client.post(url, {"images": upload("good.jpg", image_bytes())}, HTTP_ACCEPT="application/json")
    assert ok.status_code == 200
    answer = ok.json()["files"][0]
    case = Case.objects.get(pk=answer["case"])
    assert answer["ok"] and answer["url"] == reverse("clinic:case_detail", args=[case.pk])
    badge = client.get(answer["status_url"]).content.decode()
    assert 'hx-trigger="every 1s"' in badge  # queued: the line polls until the result
    bad = client.post(url, {"images": upload("notes.jpg", b"not an image at all")}, HTTP_ACCEPT="application/json")
    assert bad.status_code == 400
    refused = bad.json()["files"][0]
    assert refused["ok"] is False and refused["name"] == "notes.jpg" and refused["error"]
    empty = client.post(url, {}, HTTP_ACCEPT="application/json")
    assert empty.status_code == 400 and json.loads(empty.content)["errors"]
    assert lesion.cases.count() == 1  # nothing stored for the refused uploads
