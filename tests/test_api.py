"""The REST API: tokens (made on a page, shown once, stored as digests, expiring, revocable by their user
and their clinic's administrator), the clinical flow from patient to PDF report with a real
classification, bad input refused with nothing stored, every call audited and throttled."""

import datetime

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from skinweb.api.models import ApiToken
from skinweb.audit.models import AuditEvent
from skinweb.clinic.classification import classify_case
from skinweb.clinic.models import Case, Feedback, Lesion, Patient
from tests.builders import image_bytes, make_case, make_lesion, make_patient, upload
from tests.test_uploads import png_bomb, stored_files

pytestmark = pytest.mark.django_db


def make_token(client, user, name="bridge", days=30) -> str:
    """A token as a user makes one: on the tokens page, which shows it once."""
    client.force_login(user)
    r = client.post(reverse("api_tokens"), {"name": name, "days": days})
    assert r.status_code == 200 and "no-store" in r["Cache-Control"]
    token = r.context["new"]
    assert token.startswith("skw_") and token in r.content.decode()
    client.logout()
    return token


def api(client, token, method, url, **kwargs):
    return getattr(client, method)(url, HTTP_AUTHORIZATION=f"Token {token}", **kwargs)


def test_a_token_is_shown_once_stored_as_a_digest_and_works_until_it_expires(client, alice):
    token = make_token(client, alice)
    row = ApiToken.objects.get()
    assert row.name == "bridge" and row.user == alice and token not in (row.digest, row.token_key)
    assert row.expiry - timezone.now() > datetime.timedelta(days=29)
    client.force_login(alice)
    page = client.get(reverse("api_tokens")).content.decode()
    assert token not in page and row.token_key in page  # listed by its start only
    client.logout()
    r = api(client, token, "get", reverse("api:patient-list"))
    assert r.status_code == 200 and r.json()["results"] == []
    row.refresh_from_db()
    assert row.last_used_at is not None
    assert client.get(reverse("api:patient-list")).status_code == 401  # no token, no session
    assert api(client, token[:-1] + "x", "get", reverse("api:patient-list")).status_code == 401
    ApiToken.objects.filter(pk=row.pk).update(expiry=timezone.now() - datetime.timedelta(seconds=1))
    assert api(client, token, "get", reverse("api:patient-list")).status_code == 401
    assert not ApiToken.objects.exists()  # an expired token is deleted when presented


def test_token_lifetime_is_bounded(client, alice, settings):
    client.force_login(alice)
    r = client.post(reverse("api_tokens"), {"name": "forever", "days": settings.API_TOKEN_DAYS + 1})
    assert r.status_code == 200 and r.context["new"] is None and not ApiToken.objects.exists()
    assert "At most" in r.content.decode()


def test_revoked_by_its_user_or_their_clinic_admin_and_by_no_one_else(client, alice, bob, carol):
    first, second, third = (make_token(client, alice, f"t{i}") for i in range(3))
    bobs = make_token(client, bob, "bob's")
    # Its user, through the API: it stops working at once.
    key = ApiToken.objects.get(name="t0").token_key
    assert api(client, first, "delete", reverse("api:token-detail", args=[key])).status_code == 204
    assert api(client, first, "get", reverse("api:patient-list")).status_code == 401
    # Another clinic's clinician sees none of them and revokes none.
    listed = api(client, bobs, "get", reverse("api:token-list")).json()["results"]
    assert [t["name"] for t in listed] == ["bob's"]
    key = ApiToken.objects.get(name="t1").token_key
    assert api(client, bobs, "delete", reverse("api:token-detail", args=[key])).status_code == 404
    client.force_login(bob)
    client.post(reverse("api_token_revoke", args=[key]))
    assert ApiToken.objects.filter(name="t1").exists()
    # North's administrator sees alice's tokens and revokes one on the page.
    client.force_login(carol)
    page = client.get(reverse("api_tokens")).content.decode()
    assert "t1" in page and "t2" in page and "bob&#x27;s" not in page
    r = client.post(reverse("api_token_revoke", args=[key]))
    assert r.status_code == 302 and not ApiToken.objects.filter(name="t1").exists()
    assert api(client, second, "get", reverse("api:patient-list")).status_code == 401
    assert api(client, third, "get", reverse("api:patient-list")).status_code == 200
    events = AuditEvent.objects.filter(action="revoke_token")
    assert sorted(e.user.username for e in events) == ["alice", "carol"]


def test_from_patient_to_report_with_a_real_classification(client, alice, carol, published_model, settings):
    token = make_token(client, alice)
    r = api(client, token, "post", reverse("api:patient-list"),
            data={"identifier": "API-1", "birth_year": 1961, "sex": "male"}, content_type="application/json")
    assert r.status_code == 201, r.content
    patient = r.json()["id"]
    # The page's rules: the identifier is unique in the clinic whatever its case, no future birth year.
    for bad in ({"identifier": "api-1", "birth_year": 1961, "sex": "male"},
                {"identifier": "API-2", "birth_year": 3000, "sex": "male"},
                {"identifier": "API-3", "birth_year": 1961, "sex": "robot"}):
        r = api(client, token, "post", reverse("api:patient-list"), data=bad, content_type="application/json")
        assert r.status_code == 400, bad
    assert Patient.objects.count() == 1
    r = api(client, token, "post", reverse("api:lesion-list"),
            data={"patient": patient, "site": "posterior torso", "label": "left scapula"},
            content_type="application/json")
    assert r.status_code == 201, r.content
    lesion = r.json()["id"]
    # Two images, one of them not an image: the good one is queued, the bad one refused, not stored.
    r = api(client, token, "post", reverse("api:lesion-images", args=[lesion]),
            data={"images": [upload("back.jpg"), upload("notes.jpg", b"not an image at all")]})
    assert r.status_code == 201, r.content
    body = r.json()
    assert [c["original_name"] for c in body["cases"]] == ["back.jpg"]
    assert body["cases"][0]["status"] == "queued" and body["cases"][0]["result"] is None
    assert [x["name"] for x in body["rejected"]] == ["notes.jpg"] and body["rejected"][0]["error"]
    assert len(stored_files(settings)) == 2  # the good image and its thumbnail
    case_id = body["cases"][0]["id"]
    classify_case(case_id)  # what the worker does when the task arrives
    r = api(client, token, "get", reverse("api:case-detail", args=[case_id]))
    result = r.json()["result"]
    prediction = Case.objects.get(pk=case_id).prediction
    assert r.json()["status"] == "done"
    assert result["probability"] == pytest.approx(prediction.probability)
    assert result["threshold"] == published_model.threshold and result["model_version"] == published_model.version
    assert result["decision"] in ("benign", "malignant") and len(result["band"]) == 2
    visits = api(client, token, "get", reverse("api:lesion-visits", args=[lesion])).json()
    assert len(visits) == 1 and visits[0]["case"] == case_id and visits[0]["date"] == str(timezone.localdate())
    # Feedback: malformed refused with the form's message, then two revisions.
    url = reverse("api:case-feedback", args=[case_id])
    r = api(client, token, "post", url, data={"agrees_with_ai": True, "clinical_diagnosis": "nevus",
                                             "management": "monitor", "histopathology_date": "2020-01-01"},
            content_type="application/json")
    assert r.status_code == 400 and "histopathology_result" in r.json()
    assert not Feedback.objects.exists()
    for diagnosis in ("nevus", "melanoma"):
        r = api(client, token, "post", url, data={"agrees_with_ai": False, "clinical_diagnosis": diagnosis,
                                                 "management": "excise"}, content_type="application/json")
        assert r.status_code == 201
    assert [f["revision"] for f in api(client, token, "get", url).json()] == [2, 1]
    assert api(client, token, "get", reverse("api:case-detail", args=[case_id])).json()["feedback"]["revision"] == 2
    # The ground truth: administrators only.
    truth = {"label": "malignant", "source": "histopathology", "use_for_training": True}
    url = reverse("api:case-truth", args=[case_id])
    assert api(client, token, "post", url, data=truth, content_type="application/json").status_code == 403
    admin_token = make_token(client, carol)
    r = api(client, admin_token, "post", url, data={"label": "", "source": "", "use_for_training": True},
            content_type="application/json")
    assert r.status_code == 400  # no truth, no training
    r = api(client, admin_token, "post", url, data=truth, content_type="application/json")
    assert r.status_code == 200 and r.json()["label"] == "malignant"
    case = Case.objects.get(pk=case_id)
    assert (case.truth_label, case.truth_source, case.use_for_training) == ("malignant", "histopathology", True)
    # The PDF report and the image.
    r = api(client, token, "get", reverse("api:case-report", args=[case_id]))
    assert r.status_code == 200 and r["Content-Type"] == "application/pdf" and r.content.startswith(b"%PDF")
    r = api(client, token, "get", reverse("api:case-image", args=[case_id]))
    assert r.status_code == 200 and r["Content-Type"] == "image/jpeg"
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"create", "upload", "feedback", "relabel", "export_pdf", "api"} <= actions


@pytest.fixture
def token(client, alice):
    return make_token(client, alice)


@pytest.fixture
def lesion(alice):
    return make_lesion(make_patient(alice.clinic, "N-1"))


@pytest.mark.parametrize("name, data, message", [
    ("bomb.png", png_bomb(), "refused"),
    ("huge.jpg", None, "the limit is"),
    ("empty.jpg", b"", "empty"),
])
def test_bad_uploads_are_refused_and_leave_nothing(client, token, lesion, settings, name, data, message):
    if data is None:
        settings.MAX_UPLOAD_BYTES = 1000
        data = image_bytes(size=(400, 400))
    r = api(client, token, "post", reverse("api:lesion-images", args=[lesion.pk]),
            data={"images": [upload(name, data)]})
    assert r.status_code == 400
    body = r.json()
    errors = [x["error"] for x in body.get("rejected", [])] or body.get("images", [])
    assert any(message in str(e).lower() for e in errors), body
    assert not Case.objects.exists() and stored_files(settings) == []


def test_malformed_requests_get_a_message_not_a_500(client, token, lesion):
    url = reverse("api:lesion-images", args=[lesion.pk])
    assert api(client, token, "post", url, data={}).status_code == 400
    assert api(client, token, "post", url, data="{}", content_type="application/json").status_code == 415
    r = api(client, token, "post", reverse("api:patient-list"), data="{not json", content_type="application/json")
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = api(client, token, "patch", reverse("api:lesion-detail", args=[lesion.pk]), data={"site": "moon"},
            content_type="application/json")
    assert r.status_code == 400
    r = api(client, token, "get", reverse("api:case-list") + "?lesion=x&status=lost")
    assert r.status_code == 400 and set(r.json()) == {"lesion", "status"}  # unlike the page, no silent "any"
    assert api(client, token, "get", reverse("api:case-list") + "?page=abc").status_code == 400
    assert api(client, token, "get", reverse("api:case-list") + "?page=99").status_code == 404  # no such page
    assert api(client, token, "get", reverse("api:case-list") + "?status=done&status=failed").status_code == 400
    assert Lesion.objects.get().site == "posterior torso"


def test_a_correction_is_audited_with_old_and_new(client, token, lesion):
    r = api(client, token, "patch", reverse("api:lesion-detail", args=[lesion.pk]), data={"label": "left calf"},
            content_type="application/json")
    assert r.status_code == 200
    event = AuditEvent.objects.get(action="update")
    assert event.detail == {"changes": {"label": ["", "left calf"]}} and event.object_id == str(lesion.pk)


def test_every_call_is_audited_with_its_token(client, token, lesion, alice):
    before = AuditEvent.objects.count()
    api(client, token, "get", reverse("api:lesion-detail", args=[lesion.pk]))
    api(client, token, "get", reverse("api:lesion-detail", args=[999999]))
    client.get(reverse("api:lesion-list"))  # nobody
    events = list(AuditEvent.objects.order_by("pk"))[before:]
    assert [(e.action, e.detail["status"]) for e in events] == [("api", 200), ("api", 404), ("api", 401)]
    assert events[0].user == alice and events[0].object_type == "lesion" and events[0].clinic == alice.clinic
    assert events[0].detail["token"] == ApiToken.objects.get().token_key
    assert events[2].user is None and events[2].ip == "127.0.0.1"


def test_calls_are_throttled_per_user_and_per_address(client, token, monkeypatch):
    cache.clear()
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "2/min"})
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "2/min"})
    codes = [api(client, token, "get", reverse("api:patient-list")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    # Without a token, or with a wrong one: counted per address before being refused.
    codes = [client.get(reverse("api:patient-list")).status_code,
             api(client, token[:-2] + "00", "get", reverse("api:patient-list")).status_code,
             client.get(reverse("api:patient-list")).status_code]
    assert codes == [401, 401, 429]
    cache.clear()


def test_the_docs_page_and_schema_need_a_login(client, alice):
    assert client.get(reverse("api_docs")).status_code == 200
    schema = client.get(reverse("api:schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200 and "/api/v1/cases/{id}/" in schema.json()["paths"]
    client.logout()
    assert client.get(reverse("api_docs")).status_code == 302
    assert client.get(reverse("api:schema")).status_code in (401, 403)


def test_another_clinics_records_do_not_exist_for_the_api(client, bob, lesion, alice):
    case = make_case(lesion, alice)
    bobs = make_token(client, bob)
    for url in (reverse("api:patient-detail", args=[lesion.patient_id]), reverse("api:lesion-detail", args=[lesion.pk]),
                reverse("api:case-detail", args=[case.pk]), reverse("api:case-report", args=[case.pk]),
                reverse("api:case-image", args=[case.pk]), reverse("api:lesion-visits", args=[lesion.pk])):
        assert api(client, bobs, "get", url).status_code == 404, url
    # A lesion for another clinic's patient: the same answer as for a patient that does not exist.
    answers = [api(client, bobs, "post", reverse("api:lesion-list"), data={"patient": p, "site": "head/neck"},
                   content_type="application/json").json() for p in (lesion.patient_id, 999999)]
    assert answers[0]["patient"][0].replace(str(lesion.patient_id), "N") == \
        answers[1]["patient"][0].replace("999999", "N")
    assert Lesion.objects.count() == 1
