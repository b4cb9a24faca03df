"""An image uploaded by mistake: removed with a reason by a clinician, hidden everywhere, kept, and
restored by the clinic's administrator; both steps audited with old and new values."""

import csv
import io

import pytest
from django.urls import reverse

from skinweb.audit.models import AuditEvent
from skinweb.clinic import classification
from skinweb.clinic.models import Case
from skinweb.models_registry.training import clinic_cases
from tests.builders import make_case, make_lesion, make_patient, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def mistake(alice, published_model):
    """A classified, reviewed, relabelled and flagged image of patient DERM-9, and a good one beside it."""
    lesion = make_lesion(make_patient(alice.clinic, "DERM-9"), label="left calf")
    kept = make_case(lesion, alice, original_name="kept.jpg")
    case = make_case(lesion, alice, original_name="wrong-patient.jpg")
    for c in (kept, case):
        classification.classify_case(c.pk)
    case = Case.objects.get(pk=case.pk)
    case.record_feedback(alice, agrees_with_ai=False, clinical_diagnosis="nevus", management="monitor")
    case.relabel(alice, "benign", "consensus", True)
    Case.objects.filter(pk=case.pk).update(flagged=True)
    return Case.objects.get(pk=case.pk)


def pages(client, case):
    """What a clinician of the clinic can see of the case: every list, export and figure."""
    return {
        "lesion": client.get(reverse("clinic:lesion_detail", args=[case.lesion_id])).content.decode(),
        "timeline": client.get(reverse("clinic:lesion_detail", args=[case.lesion_id]) + "?part=timeline")
        .content.decode(),
        "patient": client.get(reverse("clinic:patient_detail", args=[case.lesion.patient_id])).content.decode(),
        "history": client.get(reverse("clinic:case_list")).content.decode(),
        "dashboard": client.get(reverse("clinic:dashboard")).content.decode(),
        "csv": b"".join(client.get(reverse("clinic:case_export")).streaming_content).decode(),
    }


def exported(body) -> set[int]:
    return {int(row["case"]) for row in csv.DictReader(io.StringIO(body))}


def test_a_removal_needs_a_reason_and_changes_nothing_without_one(client, mistake):
    for reason in ("", "   ", "x" * 501):
        r = client.post(reverse("clinic:case_remove", args=[mistake.pk]), {"reason": reason}, follow=True)
        assert "Say why the image is removed" in r.content.decode()
    assert Case.objects.filter(pk=mistake.pk).exists() and not AuditEvent.objects.filter(action="remove").exists()


def test_a_removed_image_is_hidden_everywhere_and_restored_by_the_clinic_administrator(
        client, alice, carol, south, mistake):
    before = pages(client, mistake)
    assert all(f"/cases/{mistake.pk}/" in before[k] for k in ("lesion", "timeline", "patient", "history"))
    assert exported(before["csv"]) == {mistake.pk, mistake.pk - 1} and list(clinic_cases()) == [mistake]

    r = client.post(reverse("clinic:case_remove", args=[mistake.pk]), {"reason": " Uploaded to the wrong patient "},
                    follow=True)
    assert r.redirect_chain == [(reverse("clinic:lesion_detail", args=[mistake.lesion_id]), 302)]
    assert "Image wrong-patient.jpg removed. Your clinic&#x27;s administrator can restore it" in r.content.decode()
    event = AuditEvent.objects.get(action="remove")
    assert event.user == alice and event.object_id == str(mistake.pk)
    assert event.detail == {"old": {"removed": False, "reason": ""},
                            "new": {"removed": True, "reason": "Uploaded to the wrong patient"}}

    after = pages(client, mistake)
    for name, body in after.items():
        assert f"/cases/{mistake.pk}/" not in body and "wrong-patient.jpg" not in body, name
    assert exported(after["csv"]) == {mistake.pk - 1}  # the other image of the lesion stays
    for name in ("clinic:case_detail", "clinic:case_image", "clinic:case_report", "clinic:case_heatmap"):
        assert client.get(reverse(name, args=[mistake.pk])).status_code == 404, name
    assert client.get(reverse("clinic:patient_list")).context["page"][0].n_cases == 1
    assert list(clinic_cases()) == []  # out of the training set
    assert classification.classify_case(mistake.pk) is None  # a task still queued for it does nothing
    # Clinicians do not restore; the administrator of another clinic does not even see it.
    assert client.get(reverse("clinic:removed_list")).status_code == 403
    assert client.post(reverse("clinic:case_restore", args=[mistake.pk])).status_code == 403
    client.force_login(make_user("dave", south, staff=True))
    assert "wrong-patient.jpg" not in client.get(reverse("clinic:removed_list")).content.decode()
    assert client.get(reverse("clinic:removed_image", args=[mistake.pk])).status_code == 404
    assert client.post(reverse("clinic:case_restore", args=[mistake.pk])).status_code == 404
    assert not Case.objects.filter(pk=mistake.pk).exists()

    client.force_login(carol)
    listing = client.get(reverse("clinic:removed_list")).content.decode()
    assert "wrong-patient.jpg" in listing and "Uploaded to the wrong patient" in listing and "alice" in listing
    thumb = client.get(reverse("clinic:removed_image", args=[mistake.pk]) + "?size=thumb")
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    r = client.post(reverse("clinic:case_restore", args=[mistake.pk]), follow=True)
    assert r.redirect_chain == [(reverse("clinic:removed_list"), 302)]
    assert "Image wrong-patient.jpg restored to Posterior torso – left calf of patient DERM-9" in r.content.decode()
    assert 'data-testid="removed-row"' not in r.content.decode()
    assert AuditEvent.objects.get(action="restore").detail == {
        "old": {"removed": True, "reason": "Uploaded to the wrong patient"}, "new": {"removed": False, "reason": ""}}

    restored = Case.objects.get(pk=mistake.pk)  # back with its result, feedback, ground truth and flag
    assert restored.prediction == mistake.prediction and restored.feedback == mistake.feedback
    assert restored.truth_label == "benign" and restored.use_for_training and restored.flagged
    client.force_login(alice)
    again = pages(client, restored)
    assert all(f"/cases/{mistake.pk}/" in again[k] for k in ("lesion", "timeline", "patient", "history"))
    assert list(clinic_cases()) == [restored]


def test_a_result_that_arrives_after_the_removal_is_kept_with_the_image(alice, published_model):
    case = make_case(make_lesion(make_patient(alice.clinic, "DERM-3")), alice)
    case.mark_running("worker@host:1")  # claimed by a worker, then removed while it runs
    case.remove(alice, "duplicate")
    classification.classify_batch([case], published_model)
    stored = Case.all_objects.get(pk=case.pk)
    assert stored.removed_at and stored.status == Case.Status.DONE and stored.prediction.case_id == case.pk
    assert not Case.objects.filter(pk=case.pk).exists()
