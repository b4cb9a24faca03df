"""A result that says how sure it is: the borderline band around the threshold, stored with each
prediction, shown apart from confident results in the page, the lists, the PDF and the CSV."""

import csv
import io
import math

import pytest
from django.urls import reverse
from pypdf import PdfReader

from skinweb.clinic import classification
from skinweb.clinic.models import Prediction
from skinweb.models_registry.models import DERIVED_BAND_LOGIT, ModelVersion
from tests.builders import make_case, make_lesion, make_patient

pytestmark = pytest.mark.django_db

OPERATING_POINT = {"threshold": 0.3, "sensitivity": 0.9, "specificity": 0.54, "band": [0.2, 0.45],
                   "band_definition": "probabilities between the thresholds reaching 97% and 80% sensitivity"}


@pytest.fixture
def banded_model(published_model):
    """The published test model, with an operating point as a calibrated model file stores it."""
    published_model.metadata = {**published_model.metadata, "operating_point": OPERATING_POINT}
    published_model.threshold = 0.3
    published_model.save()
    return published_model


def classified_at(lesion, user, probability, decision):
    case = make_case(lesion, user)
    classification.classify_case(case.pk)
    case.refresh_from_db()
    Prediction.objects.filter(pk=case.prediction_id).update(probability=probability, decision=decision, threshold=0.3)
    return Prediction.objects.get(pk=case.prediction_id).case


def test_the_worker_stores_the_band_with_the_prediction(alice, banded_model):
    case = make_case(make_lesion(make_patient(alice.clinic)), alice)
    classification.classify_case(case.pk)
    p = Prediction.objects.get(case=case)
    assert (p.band_low, p.band_high) == (0.2, 0.45)
    # The version's band may change later (a corrected file); the prediction keeps what it used.
    banded_model.metadata = {**banded_model.metadata, "operating_point": {**OPERATING_POINT, "band": [0.1, 0.2]}}
    banded_model.save()
    assert Prediction.objects.get(pk=p.pk).band == (0.2, 0.45)


@pytest.mark.parametrize("probability, decision, certainty", [
    (0.05, "benign", "benign"), (0.25, "benign", "borderline"), (0.31, "malignant", "borderline"),
    (0.45, "malignant", "malignant"), (0.9, "malignant", "malignant")])
def test_certainty_against_the_band(alice, banded_model, probability, decision, certainty):
    case = classified_at(make_lesion(make_patient(alice.clinic)), alice, probability, decision)
    p = case.prediction
    assert p.certainty == certainty and p.borderline == (certainty == "borderline")
    assert p.summary.startswith(f"borderline, leaning {decision}" if p.borderline else decision)


def test_older_versions_get_a_derived_band(published_model):
    version = ModelVersion.objects.get(pk=published_model.pk)
    assert not version.metadata.get("operating_point")  # a file made before bands were stored
    op = version.operating_point
    t = version.threshold
    logit = math.log(t / (1 - t))
    assert op["derived"] and op["band"][0] < t < op["band"][1]
    assert op["band"][1] == pytest.approx(1 / (1 + math.exp(-(logit + DERIVED_BAND_LOGIT))))


def test_borderline_and_confident_results_look_different(client, alice, banded_model):
    lesion = make_lesion(make_patient(alice.clinic, "P-BAND"))
    borderline = classified_at(lesion, alice, 0.31, "malignant")
    confident = classified_at(lesion, alice, 0.93, "malignant")
    page = client.get(reverse("clinic:case_detail", args=[borderline.pk])).content.decode()
    assert 'data-certainty="borderline"' in page and "alert-warning" in page and "leaning malignant" in page
    assert "found 90 of 100 malignant lesions and flagged 46 of 100 benign ones" in page
    page = client.get(reverse("clinic:case_detail", args=[confident.pk])).content.decode()
    assert 'data-certainty="malignant"' in page and "alert-danger" in page and "borderline</strong>" not in page
    history = client.get(reverse("clinic:case_list")).content.decode()
    assert history.count('data-certainty="borderline"') == 1 and history.count('data-certainty="malignant"') == 1


def test_pdf_and_csv_say_borderline(client, alice, banded_model):
    case = classified_at(make_lesion(make_patient(alice.clinic, "P-PDF")), alice, 0.25, "benign")
    text = " ".join(PdfReader(io.BytesIO(client.get(reverse("clinic:case_report", args=[case.pk])).content))
                    .pages[0].extract_text().split())
    assert "BORDERLINE, leaning benign" in text and "borderline band 0.20-0.45" in text
    rows = list(csv.DictReader(io.StringIO(b"".join(client.get(reverse("clinic:case_export")).streaming_content)
                                           .decode())))
    assert rows[0]["certainty"] == "borderline" and rows[0]["band_low"] == "0.2000" and rows[0]["band_high"] == "0.4500"


def test_every_list_of_results_shows_site_probability_threshold_decision_and_feedback(
        client, alice, banded_model, django_assert_max_num_queries):
    patient = make_patient(alice.clinic, "P-LIST")
    lesion = make_lesion(patient, site="upper extremity", label="left forearm")
    with_feedback = classified_at(lesion, alice, 0.31, "malignant")
    with_feedback.record_feedback(alice, agrees_with_ai=True, clinical_diagnosis="nevus", management="monitor",
                                  histopathology_result="", histopathology_date=None, notes="")
    classified_at(lesion, alice, 0.05, "benign")
    pages = {
        "dashboard": reverse("clinic:dashboard"),
        "history": reverse("clinic:case_list"),
        "patient": reverse("clinic:patient_detail", args=[patient.pk]),
        "lesion": reverse("clinic:lesion_detail", args=[lesion.pk]),
    }
    for name, url in pages.items():
        body = " ".join(client.get(url).content.decode().split()).lower()
        assert "upper extremity" in body or name == "lesion", name
        assert "0.31" in body and "0.05" in body and "0.30" in body, name  # both probabilities, the threshold
        assert 'data-certainty="borderline"' in body and 'data-certainty="benign"' in body, name
        assert ("feedback ✓" in body or "agrees" in body) and "no feedback" in body, name
    with django_assert_max_num_queries(12):
        client.get(pages["patient"])
