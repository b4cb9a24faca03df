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
