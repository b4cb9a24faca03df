"""Administrators relabel cases for retraining in the Django admin; predictions are read-only."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from skinweb.audit.models import AuditEvent
from skinweb.clinic.models import Case, Prediction
from tests.builders import make_case, make_clinic, make_lesion, make_patient

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def logged_in(client, root):
    client.force_login(root)


@pytest.fixture
def cases():
    lesion = make_lesion(make_patient(make_clinic(), "PAT-55"))
    return [make_case(lesion) for _ in range(3)]


def test_bulk_set_ground_truth(client, root, cases):
    url = reverse("admin:clinic_case_changelist")
    chosen = [cases[0].pk, cases[2].pk]
    # First POST shows the intermediate form; the second applies it.
    r = client.post(url, {"action": "set_ground_truth", ACTION_CHECKBOX_NAME: chosen})
    assert r.status_code == 200 and "Set ground truth" in r.content.decode()
    r = client.post(url, {"action": "set_ground_truth", ACTION_CHECKBOX_NAME: chosen, "apply": "1",
                          "label": "malignant", "source": "histopathology", "use_for_training": "on"})
    assert r.status_code == 302
    for case in Case.objects.filter(pk__in=chosen):
        assert (case.truth_label, case.truth_source, case.use_for_training) == ("malignant", "histopathology", True)
        assert case.truth_set_by == root and case.truth_set_at is not None
    assert Case.objects.get(pk=cases[1].pk).truth_label == ""
    assert AuditEvent.objects.filter(action="relabel").count() == 2


def test_training_switch_needs_a_ground_truth(client, root, cases):
    cases[0].relabel(root, "benign", "follow_up")
    client.post(reverse("admin:clinic_case_changelist"),
                {"action": "include_in_training", ACTION_CHECKBOX_NAME: [c.pk for c in cases]})
    assert list(Case.objects.filter(use_for_training=True)) == [cases[0]]


def test_change_form_records_who_set_the_label(client, root, cases):
    case = cases[0]
    url = reverse("admin:clinic_case_change", args=[case.pk])
    r = client.post(url, {"truth_label": "benign", "truth_source": "consensus", "use_for_training": "on",
                          "predictions-TOTAL_FORMS": 0, "predictions-INITIAL_FORMS": 0,
                          "feedback_history-TOTAL_FORMS": 0, "feedback_history-INITIAL_FORMS": 0})
    assert r.status_code == 302, r.content.decode()[:2000]
    case.refresh_from_db()
    assert case.truth_label == "benign" and case.truth_set_by == root


def test_search_by_patient_identifier(client, root, cases):
    r = client.get(reverse("admin:clinic_case_changelist"), {"q": "PAT-55"})
    assert r.context["cl"].result_count == 3


def test_predictions_are_read_only(client, root, cases, published_model):
    p = Prediction.objects.create(case=cases[0], model_version=published_model, probability=0.3, threshold=0.5,
                                  decision="benign", elapsed_ms=1, device="cpu")
    r = client.post(reverse("admin:clinic_prediction_change", args=[p.pk]), {"probability": 0.99})
    assert r.status_code in (302, 403, 200)
    p.refresh_from_db()
    assert p.probability == 0.3
    assert client.post(reverse("admin:clinic_prediction_delete", args=[p.pk]), {"post": "yes"}).status_code == 403
    assert Prediction.objects.filter(pk=p.pk).exists()


def test_training_switch_without_ground_truth_is_refused_in_the_form(client, root, cases):
    case = cases[0]
    r = client.post(reverse("admin:clinic_case_change", args=[case.pk]),
                    {"truth_label": "", "truth_source": "", "use_for_training": "on",
                     "predictions-TOTAL_FORMS": 0, "predictions-INITIAL_FORMS": 0,
                     "feedback_history-TOTAL_FORMS": 0, "feedback_history-INITIAL_FORMS": 0})
    assert r.status_code == 200 and "Only a case with a ground truth" in r.content.decode()
    case.refresh_from_db()
    assert case.use_for_training is False
