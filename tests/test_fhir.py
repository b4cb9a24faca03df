"""FHIR R4: a case and a visit exported as Bundles that fhir.resources reads back, with what the record
needs and nothing that names anyone; the push to a FHIR server, against a real HTTP server process that
validates what it receives, retried while that server is down."""

import json
import socket
import subprocess
import sys

import pytest
from django.urls import reverse
from fhir.resources.R4B.bundle import Bundle

from skinweb.api.models import ApiToken
from skinweb.audit.models import AuditEvent
from skinweb.clinic import fhir, tasks
from skinweb.clinic.models import Case, Prediction
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_lesion, make_patient, make_user
from tests.conftest import ROOT
from tests.fhir_receiver import references

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(db):
    return ModelVersion.objects.create(version="vgg16-test", filename="v.safetensors", arch="vgg16", input_size=64,
                                       threshold=0.25, status=ModelVersion.Status.PUBLISHED)


def classified(case, version, probability=0.3, differential=None):
    prediction = Prediction.objects.create(
        case=case, model_version=version, probability=probability, threshold=version.threshold, band_low=0.1,
        band_high=0.4, decision="malignant" if probability >= version.threshold else "benign", elapsed_ms=5,
        device="cpu", runtime="onnx-int8-recheck", views=5, differential=differential or {})
    case.mark_done(prediction)
    return case


@pytest.fixture
def case(alice, version):
    lesion = make_lesion(make_patient(alice.clinic, "N-0042", birth_year=1961, sex="male"), site="posterior torso",
                         label="left scapula")
    case = make_case(lesion, alice)
    Case.objects.filter(pk=case.pk).update(original_name="smith-john-back.jpg")
    return classified(case, version, differential={"melanoma": 0.5, "nevus": 0.3, "benign_keratosis": 0.2})


def get_bundle(client, url):
    r = client.get(url)
    assert r.status_code == 200, r.content
    assert r["Content-Type"] == "application/fhir+json"
    data = json.loads(r.content)
    Bundle.model_validate(data)  # fhir.resources reads it back
    return data


def resources(bundle, kind):
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_a_case_is_a_valid_bundle_with_its_result_and_nothing_that_names_anyone(client, alice, case, version):
    case.record_feedback(alice, agrees_with_ai=True, clinical_diagnosis="melanoma", management="excise")
    bundle = get_bundle(client, reverse("api:case-fhir", args=[case.pk]))
    assert bundle["type"] == "collection"
    assert sorted({e["resource"]["resourceType"] for e in bundle["entry"]}) == [
        "Device", "DiagnosticReport", "DocumentReference", "Media", "Observation", "Patient"]
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"][0]["value"] == "N-0042" and "name" not in patient
    assert (patient["gender"], patient["birthDate"]) == ("male", "1961")
    text = json.dumps(bundle)
    assert "smith" not in text and "alice" not in text  # no file name, no clinician
    (device,) = resources(bundle, "Device")
    assert device["version"][0]["value"] == "vgg16-test"
    assert device["property"][0]["valueQuantity"][0]["value"] == 0.25
    observations = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    assert observations["malignancy-probability"]["valueQuantity"]["value"] == 0.3
    assert observations["malignancy-decision"]["valueCodeableConcept"]["coding"][0]["code"] == "malignant"
    assert observations["malignancy-decision"]["component"][0]["valueQuantity"]["value"] == 0.25
    assert observations["borderline"]["valueBoolean"] is True  # 0.3 lies in [0.1, 0.4)
    assert {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"]
            for c in observations["differential-diagnosis"]["component"]} == {"melanoma": 0.5, "nevus": 0.3,
                                                                                "benign_keratosis": 0.2}
    assert all(o["device"]["reference"] == f"urn:uuid:{device['id']}" for o in observations.values())
    site = observations["malignancy-probability"]["bodySite"]
    assert site["coding"][0] == {"system": "http://snomed.info/sct", "code": "77568009",
                                 "display": "Structure of back of trunk"}
    assert site["text"] == "posterior torso (left scapula)"
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"  # reviewed by a clinician
    assert len(report["result"]) == 4 and "AI, not a diagnosis" in report["conclusion"]
    (media,) = resources(bundle, "Media")
    assert media["content"]["url"] == f"http://testserver/api/v1/cases/{case.pk}/image/"
    (document,) = resources(bundle, "DocumentReference")
    assert document["content"][0]["attachment"]["url"].endswith(f"/api/v1/cases/{case.pk}/report/")
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(r in urls for r in references(bundle))
    # The same case again: the same resources (stable ids), in a new bundle.
    again = get_bundle(client, reverse("api:case-fhir", args=[case.pk]))
    assert [e["fullUrl"] for e in again["entry"]] == [e["fullUrl"] for e in bundle["entry"]]
    assert AuditEvent.objects.filter(action="export_fhir", object_id=str(case.pk)).count() == 2


def test_a_case_without_a_result_is_registered_or_cancelled(client, alice, case):
    queued = make_case(case.lesion, alice)
    report = resources(get_bundle(client, reverse("api:case-fhir", args=[queued.pk])), "DiagnosticReport")[0]
    assert report["status"] == "registered" and "result" not in report
    Case.objects.filter(pk=queued.pk).update(status=Case.Status.FAILED, failure_reason="unreadable")
    report = resources(get_bundle(client, reverse("api:case-fhir", args=[queued.pk])), "DiagnosticReport")[0]
    assert report["status"] == "cancelled" and "unreadable" in report["conclusion"]
    preliminary = resources(get_bundle(client, reverse("api:case-fhir", args=[case.pk])), "DiagnosticReport")[0]
    assert preliminary["status"] == "preliminary"  # no clinician has reviewed it yet


def test_a_visit_is_one_bundle_of_its_images(client, alice, case, version):
    second = classified(make_case(case.lesion, alice), version, probability=0.05)
    Case.objects.filter(pk=second.pk).update(taken_at=case.taken_at)
    url = reverse("api:lesion-visit-fhir", args=[case.lesion_id])
    bundle = get_bundle(client, f"{url}?date={case.taken_at.date()}")
    assert len(resources(bundle, "Patient")) == 1 and len(resources(bundle, "Device")) == 1
    assert len(resources(bundle, "Media")) == 2 and len(resources(bundle, "DiagnosticReport")) == 2
    assert client.get(f"{url}?date=1999-01-01").status_code == 404
    assert client.get(f"{url}?date=yesterday").status_code == 400
    assert client.get(url).status_code == 400


def test_another_clinics_case_has_no_fhir_either(client, case, south):
    client.force_login(make_user("bob", south))
    assert client.get(reverse("api:case-fhir", args=[case.pk])).status_code == 404


@pytest.fixture
def receiver(tmp_path, request):
    """A real HTTP process that validates what it receives (tests/fhir_receiver.py)."""

    def start(fail_first=0):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        out = tmp_path / "received"
        out.mkdir()
        process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fhir_receiver.py"), str(port), str(out),
                                    str(fail_first)], stdout=subprocess.PIPE, text=True)
        request.addfinalizer(process.kill)
        assert process.stdout.readline().strip() == "ready"
        return f"http://127.0.0.1:{port}/fhir", out

    return start


def test_a_result_is_pushed_retried_while_the_server_is_down_and_accepted(case, receiver, settings):
    settings.FHIR_ENDPOINT, out = receiver(fail_first=2)
    settings.FHIR_AUTHORIZATION, settings.SITE_URL = "Bearer s3cret", "https://skin.example.org"
    # Celery's apply() runs the task here, its retries too (at once, not after their waits).
    assert tasks.push_fhir.apply(args=[case.pk]).get() == "sent"
    verdicts = sorted(out.glob("*-verdict.json"))
    assert len(sorted(out.glob("*-request.json"))) == 3 and len(verdicts) == 1
    assert json.loads(verdicts[0].read_text()) == []  # the receiver found nothing wrong
    sent = json.loads(sorted(out.glob("*-request.json"))[-1].read_text())
    assert sent["type"] == "transaction"
    assert all(e["request"]["method"] == "POST" and e["request"]["ifNoneExist"].startswith("identifier=urn:skinweb")
               for e in sent["entry"])
    media = [e["resource"] for e in sent["entry"] if e["resource"]["resourceType"] == "Media"][0]
    assert media["content"]["url"] == f"https://skin.example.org/api/v1/cases/{case.pk}/image/"
    assert json.loads(sorted(out.glob("*-headers.json"))[-1].read_text())["Authorization"] == "Bearer s3cret"
    events = AuditEvent.objects.filter(action="fhir_push", object_id=str(case.pk)).order_by("pk")
    assert [(e.detail["attempt"], e.detail["outcome"]) for e in events] == [
        (1, "will retry"), (2, "will retry"), (3, "sent")]


def test_a_refusal_is_final_and_an_unreachable_server_is_given_up_after_the_retries(case, receiver, settings):
    endpoint, out = receiver()
    broken = fhir.case_bundle(case, lambda p: "https://x" + p, kind="collection")  # not a transaction
    with pytest.raises(fhir.PushFailed, match="expected transaction"):
        fhir.push(broken, endpoint)
    settings.FHIR_ENDPOINT, settings.FHIR_PUSH_RETRIES = "http://127.0.0.1:9/fhir", 2  # nothing listens there
    assert tasks.push_fhir.apply(args=[case.pk]).get() == "given up"
    events = AuditEvent.objects.filter(action="fhir_push").order_by("pk")
    outcomes = [e.detail["outcome"] for e in events]
    assert outcomes == ["will retry", "will retry", "given up"]


def test_results_are_sent_only_where_a_fhir_server_is_configured(case, settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        tasks.enqueue_fhir([case.prediction_id])
    assert callbacks == []
    settings.FHIR_ENDPOINT = "http://127.0.0.1:9/fhir"
    with django_capture_on_commit_callbacks() as callbacks:
        tasks.enqueue_fhir([case.prediction_id])
    assert len(callbacks) == 1


def test_the_token_user_gets_fhir_through_the_api(client, alice, case):
    token = ApiToken.objects.create(alice, name="record")[1]
    client.logout()
    r = client.get(reverse("api:case-fhir", args=[case.pk]), HTTP_AUTHORIZATION=f"Token {token}",
                   HTTP_ACCEPT="application/fhir+json")
    assert r.status_code == 200 and r["Content-Type"] == "application/fhir+json"
