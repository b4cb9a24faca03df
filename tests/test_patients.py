"""Patients and lesions: created in the user's clinic, identifiers unique per clinic."""

import pytest
from django.urls import reverse

from skinweb.audit.models import AuditEvent
from skinweb.clinic.models import Lesion, Patient
from tests.builders import make_clinic, make_patient

pytestmark = pytest.mark.django_db


def test_create_patient_then_lesion(client, alice):
    r = client.post(reverse("clinic:patient_create"), {"identifier": " DERM-0042 ", "birth_year": 1961, "sex": "male"})
    patient = Patient.objects.get()
    assert r.status_code == 302 and r.url == reverse("clinic:lesion_create", args=[patient.pk])
    assert patient.identifier == "DERM-0042" and patient.clinic == alice.clinic and patient.created_by == alice

    r = client.post(r.url, {"site": "upper extremity", "label": "left forearm"})
    lesion = Lesion.objects.get()
    assert r.url == reverse("clinic:lesion_detail", args=[lesion.pk])
    assert lesion.patient == patient and lesion.get_site_display() == "Upper extremity"
    assert set(AuditEvent.objects.values_list("action", "object_type")) == {("create", "patient"), ("create", "lesion")}


def test_identifier_is_unique_per_clinic_only(client, alice):
    make_patient(alice.clinic, "DERM-1")
    make_patient(make_clinic("South"), "DERM-2")
    r = client.post(reverse("clinic:patient_create"), {"identifier": "derm-1", "birth_year": 1990, "sex": "female"})
    assert "already has a patient" in r.content.decode()
    r = client.post(reverse("clinic:patient_create"), {"identifier": "DERM-2", "birth_year": 1990, "sex": "female"})
    assert r.status_code == 302
    assert Patient.objects.filter(identifier="DERM-2").count() == 2


@pytest.mark.parametrize(
    "data,message",
    [
        ({"identifier": "", "birth_year": 1990, "sex": "female"}, "This field is required"),
        ({"identifier": "X", "birth_year": 1800, "sex": "female"}, "Enter a year between"),
        ({"identifier": "X", "birth_year": "soon", "sex": "female"}, "Enter a whole number"),
        ({"identifier": "X", "birth_year": 1990, "sex": "robot"}, "Select a valid choice"),
    ],
)
def test_malformed_patient_form_changes_nothing(client, alice, data, message):
    r = client.post(reverse("clinic:patient_create"), data)
    assert r.status_code == 200 and message in r.content.decode()
    assert not Patient.objects.exists()


def test_unknown_anatomical_site_is_refused(client, alice):
    patient = make_patient(alice.clinic)
    r = client.post(reverse("clinic:lesion_create", args=[patient.pk]), {"site": "elbow"})
    assert "Select a valid choice" in r.content.decode() and not Lesion.objects.exists()


def test_patient_and_lesion_details_can_be_corrected_with_old_and_new_in_the_audit(client, alice):
    from tests.builders import make_lesion

    patient = make_patient(alice.clinic, "DERM-7", birth_year=1961)
    make_patient(alice.clinic, "DERM-8")
    lesion = make_lesion(patient)
    url = reverse("clinic:patient_edit", args=[patient.pk])
    assert "Correct patient" in client.get(url).content.decode()
    clash = client.post(url, {"identifier": "derm-8", "birth_year": 1961, "sex": patient.sex})
    assert "already has a patient" in clash.content.decode()  # another patient's identifier: refused
    r = client.post(url, {"identifier": "DERM-7", "birth_year": 1962, "sex": patient.sex})
    assert r.status_code == 302 and r.url == reverse("clinic:patient_detail", args=[patient.pk])
    patient.refresh_from_db()
    assert patient.birth_year == 1962 and patient.identifier == "DERM-7"  # its own identifier is no clash
    event = AuditEvent.objects.get(action="update", object_type="patient")
    assert event.detail["changes"] == {"birth_year": ["1961", "1962"]}
    r = client.post(reverse("clinic:lesion_edit", args=[lesion.pk]), {"site": "lower extremity", "label": "left shin"})
    assert r.status_code == 302
    lesion.refresh_from_db()
    assert lesion.site == "lower extremity" and lesion.label == "left shin"
    changes = AuditEvent.objects.get(action="update", object_type="lesion").detail["changes"]
    assert set(changes) == {"site", "label"}
    client.post(reverse("clinic:lesion_edit", args=[lesion.pk]), {"site": "lower extremity", "label": "left shin"})
    assert AuditEvent.objects.filter(action="update").count() == 2  # nothing changed: nothing recorded


def test_an_image_moves_to_another_lesion_of_the_clinic_with_its_results_and_never_to_another_clinic(
        client, alice, bob, published_model):
    from skinweb.clinic import classification
    from skinweb.clinic.models import Case
    from tests.builders import make_case, make_lesion

    wrong = make_lesion(make_patient(alice.clinic, "DERM-1"), label="left arm")
    right = make_lesion(make_patient(alice.clinic, "DERM-2"), label="back")
    south = make_lesion(make_patient(bob.clinic, "S-1"))
    case = make_case(wrong, alice)
    classification.classify_case(case.pk)
    case.record_feedback(alice, agrees_with_ai=True, clinical_diagnosis="nevus", management="monitor")
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert "DERM-2" not in page and "S-1" not in page  # no list of the clinic's lesions: found by identifier
    url = reverse("clinic:case_move", args=[case.pk])
    client.post(url, {"lesion": south.pk, "reason": "wrong patient", "confirm": "1"})  # another clinic's: refused
    client.post(url, {"patient": "S-1", "reason": "wrong patient"})  # another clinic's patient: not found
    client.post(url, {"lesion": "x", "reason": "wrong patient"})
    r = client.post(url, {"lesion": right.pk, "confirm": "1"}, follow=True)  # no reason: refused
    assert "Say why the image is moved" in r.content.decode()
    case.refresh_from_db()
    assert case.lesion == wrong and not AuditEvent.objects.filter(action="move").exists()
    # Found by the patient's identifier, the lesion chosen, then confirmed: only then moved.
    choose = client.post(url, {"patient": "DERM-2", "reason": "uploaded under the wrong patient"})
    assert choose.status_code == 200 and 'data-testid="move-choose"' in choose.content.decode()
    confirm = client.post(url, {"lesion": right.pk, "reason": "uploaded under the wrong patient"})
    assert confirm.status_code == 200 and "DERM-2" in confirm.content.decode()
    case.refresh_from_db()
    assert case.lesion == wrong
    r = client.post(url, {"lesion": right.pk, "reason": "uploaded under the wrong patient", "confirm": "1"})
    assert r.status_code == 302
    case = Case.objects.get(pk=case.pk)
    assert case.lesion == right and case.prediction and case.feedback  # its results and feedback came along
    event = AuditEvent.objects.get(action="move")
    assert event.detail["old"]["patient"] == "DERM-1" and event.detail["new"]["patient"] == "DERM-2"
    assert event.detail["reason"] == "uploaded under the wrong patient"
    timeline = client.get(reverse("clinic:lesion_detail", args=[right.pk])).content.decode()
    assert f"Open case {case.pk}" in timeline
