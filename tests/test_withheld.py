"""No decision on a picture that is not a dermoscopic lesion (issue 43): withheld on the page, the PDF, the CSV,
the API, FHIR, DICOM and the dashboards; a clinician may ask for the score, recorded and marked everywhere."""

import csv
import io

import pydicom
import pytest
from django.urls import reverse
from pypdf import PdfReader

from skinweb.audit.models import AuditEvent
from skinweb.clinic import imagechecks
from skinweb.clinic.fhir import case_bundle
from skinweb.clinic.models import Case, Prediction
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_lesion, make_patient, make_user
from tests.test_api import api, make_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def version():
    return ModelVersion.objects.create(version="v-test", filename="v.safetensors", arch="vgg16", input_size=64,
                                       threshold=0.2, status=ModelVersion.Status.PUBLISHED)


def classified(lesion, version, probability, distance=1.0, warnings=()):
    """A case classified with ``probability``; ``distance`` above the cut-off 10 fails the lesion check."""
    case = make_case(lesion)
    Case.objects.filter(pk=case.pk).update(image_warnings=list(warnings))
    case.refresh_from_db()
    p = Prediction.objects.create(case=case, model_version=version, probability=probability, threshold=0.2,
                                  band_low=0.05, band_high=0.4,
                                  decision="malignant" if probability >= 0.2 else "benign",
                                  elapsed_ms=1, device="cpu", lesion_distance=distance, lesion_cutoff=10.0,
                                  differential={"melanoma": 0.9, "nevus": 0.1})
    case.mark_done(p)
    return Case.objects.get(pk=case.pk)


@pytest.fixture
def landscape(alice, version):
    """A picture the lesion check finds unlike any dermoscopic lesion, scored 0.000 benign by the model."""
    return classified(make_lesion(make_patient(alice.clinic, "N-1")), version, 0.0004, distance=55.0)


def pdf_text(client, case) -> str:
    r = client.get(reverse("clinic:case_report", args=[case.pk]))
    return " ".join(PdfReader(io.BytesIO(r.content)).pages[0].extract_text().split())


def csv_row(client, case) -> dict:
    rows = list(csv.DictReader(io.StringIO(b"".join(client.get(reverse("clinic:case_export")).streaming_content)
                                          .decode())))
    return next(r for r in rows if r["case"] == str(case.pk))


def test_a_picture_that_is_not_a_lesion_gets_no_decision_anywhere(client, alice, landscape):
    assert landscape.result_withheld and landscape.shown_prediction is None
    assert landscape.withheld_reason == imagechecks.UNLIKE_LESION
    page = client.get(reverse("clinic:case_detail", args=[landscape.pk])).content.decode()
    assert 'data-certainty="withheld"' in page and "No AI result for this image" in page
    assert "AI decision" not in page and 'data-testid="probability"' not in page
    assert 'data-testid="differential"' not in page
    text = pdf_text(client, landscape)
    assert "NONE: no AI result" in text and "benign" not in text.lower().replace("benign or malignant", "")
    row = csv_row(client, landscape)
    assert row["probability"] == row["decision"] == row["certainty"] == row["differential"] == ""
    assert row["result_withheld"] == imagechecks.UNLIKE_LESION
    token = make_token(client, alice)
    body = api(client, token, "get", reverse("api:case-detail", args=[landscape.pk])).json()
    assert body["result"] is None and body["result_withheld"] == imagechecks.UNLIKE_LESION
    assert body["score_released"] is False
    bundle = case_bundle(landscape, lambda path: "https://skinweb.example" + path)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert "Observation" not in kinds and report["conclusion"].startswith("No AI result")
    client.force_login(alice)
    dcm = pydicom.dcmread(io.BytesIO(client.get(reverse("clinic:case_dicom", args=[landscape.pk])).content))
    assert "no AI result" in dcm.ImageComments and "benign" not in dcm.ImageComments
    lists = client.get(reverse("clinic:case_list")).content.decode() + client.get(reverse("clinic:dashboard")) \
        .content.decode()
    assert "no result: not a lesion image" in lists and "p 0.00" not in lists


def test_an_almost_uniform_image_is_withheld_and_other_warnings_are_not(alice, version):
    lesion = make_lesion(make_patient(alice.clinic, "N-2"))
    uniform = classified(lesion, version, 0.3, warnings=[imagechecks.UNIFORM])
    dark = classified(lesion, version, 0.3, warnings=["too dark", "blurred"])
    assert uniform.result_withheld and uniform.withheld_reason == imagechecks.UNIFORM
    assert not dark.result_withheld and dark.shown_prediction == dark.prediction
    assert set(Case.objects.results_withheld()) == {uniform}
    assert set(Case.objects.with_results_shown()) == {dark}


def test_a_clinician_may_ask_for_the_score_with_a_reason_recorded_and_marked_everywhere(client, alice, landscape):
    url = reverse("clinic:case_release_score", args=[landscape.pk])
    r = client.post(url, {"reason": "  "}, follow=True)
    assert "Say why you need the score" in r.content.decode()
    assert Case.objects.get(pk=landscape.pk).result_withheld and not AuditEvent.objects.filter(
        action="release_score").exists()
    client.post(url, {"reason": "clinical photo of a known naevus, comparing with last year"})
    case = Case.objects.get(pk=landscape.pk)
    assert not case.result_withheld and case.score_released and case.score_released_by == alice
    event = AuditEvent.objects.get(action="release_score")
    assert event.user == alice and event.detail["new"]["score_release_reason"].startswith("clinical photo")
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert 'data-testid="score-released"' in page and "Score shown on request" in page and "AI decision" in page
    assert "SCORE SHOWN ON REQUEST" in pdf_text(client, case)
    row = csv_row(client, case)
    assert row["decision"] == "benign" and row["certainty"] == "benign (score on request)"
    token = make_token(client, alice)
    body = api(client, token, "get", reverse("api:case-detail", args=[case.pk])).json()
    assert body["result"]["decision"] == "benign" and body["score_released"] is True and body["result_withheld"] == ""


def test_feedback_on_a_withheld_result_does_not_ask_whether_the_clinician_agrees_with_it(client, alice, landscape):
    client.force_login(alice)
    page = client.get(reverse("clinic:case_detail", args=[landscape.pk])).content.decode()
    assert 'data-testid="probability"' not in page and "agree with the AI" not in page
    r = client.post(reverse("clinic:case_feedback", args=[landscape.pk]),
                    {"clinical_diagnosis": "nevus", "management": "monitor"})
    assert r.status_code == 302
    feedback = Case.objects.get(pk=landscape.pk).feedback
    assert feedback.agrees_with_ai is None and feedback.clinical_diagnosis == "nevus"
    page = client.get(reverse("clinic:case_detail", args=[landscape.pk])).content.decode()
    assert "no AI decision shown" in page
    assert csv_row(client, landscape)["agrees_with_ai"] == "no AI decision shown"
    token = make_token(client, alice)
    url = reverse("api:case-feedback", args=[landscape.pk])
    assert api(client, token, "post", url, data={"clinical_diagnosis": "nevus", "management": "reassure"},
               content_type="application/json").status_code == 201
    # Where a decision is shown, the question is asked and must be answered.
    shown = classified(landscape.lesion, landscape.prediction.model_version, 0.3)
    client.force_login(alice)
    assert "agree with the AI" in client.get(reverse("clinic:case_detail", args=[shown.pk])).content.decode()
    r = api(client, token, "post", reverse("api:case-feedback", args=[shown.pk]),
            data={"clinical_diagnosis": "nevus", "management": "reassure"}, content_type="application/json")
    assert r.status_code == 400 and "agrees_with_ai" in r.json()


def test_an_outsider_cannot_release_a_score(client, alice, bob, landscape):
    client.force_login(bob)
    assert client.post(reverse("clinic:case_release_score", args=[landscape.pk]), {"reason": "x"}).status_code == 404
    assert Case.objects.get(pk=landscape.pk).result_withheld


def test_the_waiting_list_puts_the_riskiest_first(client, alice, version):
    lesion = make_lesion(make_patient(alice.clinic, "N-3"))
    benign = classified(lesion, version, 0.001)
    withheld = classified(lesion, version, 0.9, distance=50.0)
    malignant_low = classified(lesion, version, 0.5)
    borderline = classified(lesion, version, 0.25)
    malignant_high = classified(lesion, version, 0.95)
    order = list(Case.objects.visible_to(alice).awaiting_review().by_risk())
    assert order == [malignant_high, malignant_low, borderline, withheld, benign]
    page = client.get(reverse("clinic:dashboard")).content.decode()
    positions = [page.index(f'href="/cases/{c.pk}/"') for c in order]
    assert positions == sorted(positions)


def test_the_platform_administrator_is_told_why_the_home_page_shows_no_patients(client, version):
    root = make_user("root2", None, superuser=True)
    client.force_login(root)
    page = client.get(reverse("clinic:dashboard")).content.decode()
    assert 'data-testid="no-clinic"' in page and "All clinics" not in page


def test_a_token_client_opens_the_heat_map_link_the_api_gives(client, alice, bob, version):
    """issue 43: the API gave a heat-map link to the pages, which a token client cannot open."""
    from django.core.files.base import ContentFile

    from tests.builders import image_bytes

    case = classified(make_lesion(make_patient(alice.clinic, "N-4")), version, 0.5)
    case.prediction.heatmap.save("h.png", ContentFile(image_bytes("PNG")))
    token = make_token(client, alice)
    link = api(client, token, "get", reverse("api:case-detail", args=[case.pk])).json()["result"]["heatmap"]
    assert link == reverse("api:case-heatmap", args=[case.pk])
    r = api(client, token, "get", link)
    assert r.status_code == 200 and r["Content-Type"] == "image/png"
    assert api(client, make_token(client, bob), "get", link).status_code == 404
