"""Feedback keeps its history; the case history filters return the right cases."""

import datetime

import pytest
from django.urls import reverse

from skinweb.audit.models import AuditEvent
from skinweb.clinic.models import Case, Prediction
from tests.builders import make_case, make_clinic, make_lesion, make_patient

pytestmark = pytest.mark.django_db


def predict(case, version, probability):
    p = Prediction.objects.create(case=case, model_version=version, probability=probability, threshold=0.5,
                                  decision="malignant" if probability >= 0.5 else "benign", elapsed_ms=10, device="cpu")
    case.mark_done(p)
    return case


FEEDBACK = {"agrees_with_ai": "yes", "clinical_diagnosis": "nevus", "management": "monitor", "notes": "first look"}


def test_feedback_edits_keep_earlier_versions(client, alice, published_model):
    case = predict(make_case(make_lesion(make_patient(alice.clinic))), published_model, 0.8)
    url = reverse("clinic:case_feedback", args=[case.pk])
    assert client.post(url, FEEDBACK).status_code == 302
    histo = {**FEEDBACK, "agrees_with_ai": "no", "clinical_diagnosis": "melanoma", "management": "excise",
             "histopathology_result": "melanoma", "histopathology_date": "2026-11-20", "notes": "histo back"}
    assert client.post(url, histo).status_code == 302

    case.refresh_from_db()
    revisions = list(case.feedback_history.order_by("revision"))
    assert [f.revision for f in revisions] == [1, 2]
    assert revisions[0].clinical_diagnosis == "nevus" and revisions[0].agrees_with_ai is True
    assert case.feedback == revisions[1] and case.feedback.agrees_with_ai is False
    assert case.feedback.histopathology_date == datetime.date(2026, 11, 20)
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert "first look" in page and "histo back" in page
    assert AuditEvent.objects.filter(action="feedback", object_id=str(case.pk)).count() == 2


def test_malformed_feedback_is_refused_and_changes_nothing(client, alice):
    case = make_case(make_lesion(make_patient(alice.clinic)))
    url = reverse("clinic:case_feedback", args=[case.pk])
    bad = {**FEEDBACK, "clinical_diagnosis": "dragon", "histopathology_date": "2999-01-01"}
    r = client.post(url, bad)
    assert r.status_code == 200
    assert "Select a valid choice" in r.content.decode() and "in the future" in r.content.decode()
    assert case.feedback_history.count() == 0


@pytest.fixture
def history(alice, published_model):
    """Six cases of two patients, in known states, plus one of another clinic."""
    p1, p2 = make_patient(alice.clinic, "ANNA-1"), make_patient(alice.clinic, "BERT-2")
    l1, l2 = make_lesion(p1), make_lesion(p2)
    cases = {
        "benign_agreed": predict(make_case(l1), published_model, 0.1),
        "malignant_disagreed": predict(make_case(l1), published_model, 0.9),
        "malignant_no_feedback": predict(make_case(l2), published_model, 0.7),
        "failed": make_case(l2, status=Case.Status.FAILED, failure_reason="x"),
        "queued": make_case(l2),
        "benign_no_feedback": predict(make_case(l1), published_model, 0.2),
    }
    cases["benign_agreed"].record_feedback(
        alice, agrees_with_ai=True, clinical_diagnosis="nevus", management="reassure"
    )
    cases["malignant_disagreed"].record_feedback(alice, agrees_with_ai=False, clinical_diagnosis="seborrheic_keratosis",
                                                 management="monitor")
    predict(make_case(make_lesion(make_patient(make_clinic("South"), "ANNA-9"))), published_model, 0.9)
    return cases


@pytest.mark.parametrize(
    "query,expected",
    [
        (
            "",
            ["benign_no_feedback", "queued", "failed", "malignant_no_feedback", "malignant_disagreed", "benign_agreed"],
        ),
        ("status=failed", ["failed"]),
        ("status=queued", ["queued"]),
        ("decision=malignant", ["malignant_no_feedback", "malignant_disagreed"]),
        ("decision=benign", ["benign_no_feedback", "benign_agreed"]),
        ("feedback=given", ["malignant_disagreed", "benign_agreed"]),
        ("feedback=missing", ["benign_no_feedback", "queued", "failed", "malignant_no_feedback"]),
        ("disagreement=on", ["malignant_disagreed"]),
        ("q=anna", ["benign_no_feedback", "malignant_disagreed", "benign_agreed"]),
        ("q=BERT&decision=malignant", ["malignant_no_feedback"]),
        (
            "status=nonsense",
            ["benign_no_feedback", "queued", "failed", "malignant_no_feedback", "malignant_disagreed", "benign_agreed"],
        ),
    ],
)
def test_history_filters(client, history, query, expected):
    r = client.get(reverse("clinic:case_list") + "?" + query)
    assert r.status_code == 200
    names = {c.pk: n for n, c in history.items()}
    assert [names[c.pk] for c in r.context["page"]] == expected  # newest first


def test_history_filter_by_patient(client, history):
    patient = history["queued"].lesion.patient
    r = client.get(reverse("clinic:case_list"), {"patient": patient.pk})
    assert {c.pk for c in r.context["page"]} == {history[k].pk for k in ("malignant_no_feedback", "failed", "queued")}


def test_history_is_paginated_with_constant_queries(client, alice, history, django_assert_max_num_queries):
    lesion = history["queued"].lesion
    for _ in range(30):
        make_case(lesion)
    with django_assert_max_num_queries(8):
        r = client.get(reverse("clinic:case_list"))
    assert len(r.context["page"]) == 25 and r.context["page"].paginator.count == 36
    r2 = client.get(reverse("clinic:case_list"), {"page": 2})
    assert len(r2.context["page"]) == 11


def test_patient_page_lists_lesions_and_images_over_time(client, history):
    patient = history["queued"].lesion.patient
    body = client.get(reverse("clinic:patient_detail", args=[patient.pk])).content.decode()
    for key in ("malignant_no_feedback", "failed", "queued"):
        assert reverse("clinic:case_image", args=[history[key].pk]) + "?size=thumb" in body


def test_status_panel_polls_while_pending_and_offers_feedback_when_done(client, alice, published_model):
    case = make_case(make_lesion(make_patient(alice.clinic)))
    body = client.get(reverse("clinic:case_status", args=[case.pk])).content.decode()
    assert 'hx-trigger="every 1s"' in body and "Save feedback" not in body
    predict(case, published_model, 0.6)
    body = client.get(reverse("clinic:case_status", args=[case.pk])).content.decode()
    assert "hx-trigger" not in body and "Save feedback" in body and "0.600" in body
