"""Referrals (issue 45): a referring practice sends a lesion, the clinic's dermatologist triages the open referrals
by risk and answers, the practice reads the answer; everyone else gets 404."""

import datetime
import email
import mailbox
import subprocess
import sys

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from skinweb.accounts.models import Role, User
from skinweb.audit.models import AuditEvent
from skinweb.clinic.models import Case, Lesion, Patient, Prediction
from skinweb.launcher import free_port, wait_for_port
from skinweb.models_registry.models import ModelVersion
from skinweb.referrals.models import Answer, Practice, Referral
from tests.builders import PASSWORD, image_bytes, make_clinic, make_user, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def practice(north):
    p = Practice.objects.create(name="Riverside surgery", code="RIV", email="desk@riverside.example")
    p.clinics.add(north)
    return p


@pytest.fixture
def dana(practice):
    """A referrer of Riverside, which refers to North."""
    return User.objects.create_user("dana", password=PASSWORD, practice=practice, email="dana@riverside.example")


@pytest.fixture
def erin(south):
    """A referrer of another practice (Hillside, referring to South)."""
    other = Practice.objects.create(name="Hillside surgery", code="HIL")
    other.clinics.add(south)
    return User.objects.create_user("erin", password=PASSWORD, practice=other)


def form_data(clinic, **changes):
    data = {"clinic": clinic.pk, "patient_identifier": "RS-0042", "birth_year": 1961, "sex": "female",
            "site": "posterior torso", "changed_size": "on", "changed_colour": "on", "inflammation": "on",
            "duration_months": 4, "history": "Darker over the summer.", "urgency": "urgent",
            "images": [upload("a.jpg"), upload("b.jpg", data=image_bytes(color=(150, 80, 50)))]}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def refer(client, referrer, clinic, **changes):
    client.force_login(referrer)
    return client.post(reverse("referrals:create"), form_data(clinic, **changes))


def classify(case, probability, version, withheld=False):
    p = Prediction.objects.create(case=case, model_version=version, probability=probability, threshold=0.2,
                                  band_low=0.1, band_high=0.4, decision="malignant" if probability >= 0.2 else "benign",
                                  elapsed_ms=1, device="cpu", lesion_distance=50.0 if withheld else 1.0,
                                  lesion_cutoff=10.0)
    case.mark_done(p)


@pytest.fixture
def version():
    return ModelVersion.objects.create(version="v-test", filename="v.safetensors", arch="vgg16", input_size=64,
                                       threshold=0.2, status=ModelVersion.Status.PUBLISHED)


def test_a_referrer_sends_a_referral_that_becomes_the_clinics_records(client, dana, north, alice,
                                                                      django_capture_on_commit_callbacks):
    alice.email = "alice@north.example"
    alice.save()
    with django_capture_on_commit_callbacks(execute=True):
        r = refer(client, dana, north)
    referral = Referral.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("referrals:detail", args=[referral.pk])
    assert referral.practice.code == "RIV" and referral.clinic == north and referral.created_by == dana
    assert referral.checklist_score == 2 + 2 + 1 and referral.urgency == "urgent"
    patient = referral.lesion.patient
    assert patient.clinic == north and patient.identifier == "RIV-RS-0042" and patient.birth_year == 1961
    assert referral.lesion.cases.count() == 2 and all(c.status == "queued" for c in referral.lesion.cases.all())
    assert referral.ai_tier == Referral.Tier.NO_RESULT
    assert AuditEvent.objects.filter(action="refer", object_id=str(referral.pk), user=dana).exists()
    assert AuditEvent.objects.filter(action="upload").count() == 2
    # The clinic is told, with a link and no patient details.
    (sent,) = mail.outbox
    assert sent.to == ["alice@north.example"] and reverse("referrals:detail", args=[referral.pk]) in sent.body
    assert "RS-0042" not in sent.body and "1961" not in sent.body
    # A second referral of the same patient from the same practice: the same patient, a new lesion.
    refer(client, dana, north, images=[upload("c.jpg")])
    assert Patient.objects.count() == 1 and Lesion.objects.count() == 2
    page = client.get(reverse("referrals:mine")).content.decode()
    assert page.count("Waiting for review") == 2


@pytest.mark.parametrize("changes, message", [
    ({"images": None}, "Add at least one dermoscopic image"),
    ({"duration_months": -1}, "greater than or equal to 0"),
    ({"duration_months": 5000}, "at most 1200"),
    ({"birth_year": 1850}, "between 1900"),
    ({"urgency": "yesterday"}, "Select a valid choice"),
    ({"patient_identifier": "  "}, "This field is required"),
    ({"images": [upload("good.jpg"), upload("notes.jpg", data=b"%PDF-1.4 not an image")]}, "notes.jpg"),
])
def test_bad_input_gets_a_clear_message_and_changes_nothing(client, dana, north, changes, message):
    r = refer(client, dana, north, **changes)
    assert r.status_code == 200 and message in r.content.decode()
    assert not Referral.objects.exists() and not Case.all_objects.exists() and not Patient.objects.exists()
    assert not Lesion.objects.exists()


def test_a_file_too_large_is_refused_and_nothing_is_kept(client, dana, north, settings):
    settings.MAX_UPLOAD_BYTES = 2_000
    r = refer(client, dana, north, images=[upload("big.jpg", data=image_bytes(size=(400, 400), quality=100))])
    assert r.status_code == 200 and "the limit is" in r.content.decode()
    assert not Referral.objects.exists() and not Case.all_objects.exists()


def test_a_practice_sends_only_to_the_clinics_it_is_linked_to(client, dana, south):
    r = refer(client, dana, south)
    assert r.status_code == 200 and "Select a valid choice" in r.content.decode() and not Referral.objects.exists()


def test_the_triage_list_puts_the_riskiest_referral_first(client, dana, north, alice, version):
    for identifier, checklist in (("A", {}), ("B", {"changed_shape": "on"}), ("C", {})):
        refer(client, dana, north, patient_identifier=identifier, **checklist)
    a, b, c = Referral.objects.order_by("pk")
    Referral.objects.filter(pk=a.pk).update(created_at=timezone.now() - datetime.timedelta(days=20))
    for case in a.lesion.cases.all():
        classify(case, 0.02, version)  # benign, waiting longest, past the urgent target
    b_cases = list(b.lesion.cases.all())
    classify(b_cases[0], 0.03, version)
    classify(b_cases[1], 0.15, version)  # borderline
    c_cases = list(c.lesion.cases.all())
    classify(c_cases[0], 0.9, version)  # malignant above the band
    classify(c_cases[1], 0.6, version, withheld=True)  # not a lesion: counts as no result, not as its score
    assert [r.pk for r in Referral.objects.open().triage_order()] == [c.pk, b.pk, a.pk]
    c.refresh_from_db()
    assert c.ai_tier == Referral.Tier.MALIGNANT and c.ai_probability == pytest.approx(0.9)
    client.force_login(alice)
    page = client.get(reverse("referrals:triage")).content.decode()
    rows = [page.index(f'data-referral="{r.pk}"') for r in (c, b, a)]
    assert rows == sorted(rows)
    assert page.count('data-testid="late"') == 1 and "Referral" in page
    # The referral's images as the dermatologist sees them: each with its result, linked to its case.
    detail = client.get(reverse("referrals:detail", args=[c.pk])).content.decode()
    assert "no result: not a lesion image" in detail and reverse("clinic:case_detail", args=[c_cases[0].pk]) in detail


def test_the_dermatologist_returns_a_referral_with_advice_and_the_practice_reads_it(
        client, dana, north, alice, django_capture_on_commit_callbacks):
    refer(client, dana, north)
    referral = Referral.objects.get()
    client.force_login(alice)
    url = reverse("referrals:answer", args=[referral.pk])
    assert client.post(url, {"action": "return", "message": "  "}).status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(url, {"action": "return", "message": "Seborrhoeic keratosis. Reassure; no follow-up."})
    assert r.status_code == 302
    referral.refresh_from_db()
    assert referral.status == Referral.Status.RETURNED and referral.answered_at is not None
    answer = Answer.objects.get()
    assert answer.created_by == alice and answer.action == "return"
    event = AuditEvent.objects.get(action="answer_referral")
    assert event.user == alice and event.detail["new"] == {"status": "returned"}
    (sent,) = mail.outbox
    assert sorted(sent.to) == ["dana@riverside.example", "desk@riverside.example"]
    assert "RS-0042" not in sent.body and "Seborrhoeic" not in sent.body and "Log in" in sent.body
    # Answered once: a second answer changes nothing.
    client.post(url, {"action": "book_urgent", "message": "again"})
    assert Answer.objects.count() == 1
    client.force_login(dana)
    page = client.get(reverse("referrals:detail", args=[referral.pk])).content.decode()
    assert "Returned with advice" in page and "Seborrhoeic keratosis" in page
    assert "p 0." not in page and "answer-form" not in page  # no AI figures, no answering for the practice


def test_better_images_asked_for_and_sent_put_the_referral_back_in_the_list(client, dana, north, alice):
    refer(client, dana, north)
    referral = Referral.objects.get()
    client.force_login(alice)
    client.post(reverse("referrals:answer", args=[referral.pk]),
                {"action": "more_images", "message": "Please send a sharper image, in focus, with the dermatoscope."})
    referral.refresh_from_db()
    assert referral.status == Referral.Status.MORE_IMAGES and referral in Referral.objects.open()
    client.force_login(dana)
    url = reverse("referrals:more_images", args=[referral.pk])
    assert client.post(url, {"images": [upload("x.jpg", data=b"junk")]}).status_code == 400
    assert referral.lesion.cases.count() == 2
    r = client.post(url, {"images": [upload("sharp.jpg")], "note": "Retaken"})
    assert r.status_code == 302
    referral.refresh_from_db()
    assert referral.status == Referral.Status.OPEN and referral.lesion.cases.count() == 3
    assert AuditEvent.objects.filter(action="more_images", user=dana).exists()


def test_everyone_else_gets_404_and_a_referrer_sees_nothing_of_the_clinic(client, dana, erin, north, alice, bob):
    refer(client, dana, north)
    referral = Referral.objects.get()
    case = referral.lesion.cases.first()
    urls = [reverse("referrals:detail", args=[referral.pk]), reverse("referrals:image", args=[referral.pk, case.pk]),
            reverse("referrals:overview", args=[referral.pk])]
    posts = [reverse("referrals:answer", args=[referral.pk]), reverse("referrals:more_images", args=[referral.pk])]
    for outsider in (erin, bob):
        client.force_login(outsider)
        assert all(client.get(u).status_code == 404 for u in urls)
        assert all(client.post(u, {"action": "return", "message": "x"}).status_code == 404 for u in posts)
    assert referral.answers.count() == 0
    client.force_login(bob)
    page = client.get(reverse("referrals:triage")).content.decode()
    assert f'data-referral="{referral.pk}"' not in page and "No referral is waiting" in page
    # The referrer: their referral's pages only; the clinic's records, the API and the admin answer 404 / 403.
    client.force_login(dana)
    assert dana.role == Role.REFERRER
    assert client.get(reverse("referrals:image", args=[referral.pk, case.pk])).status_code == 200
    for url in (reverse("clinic:case_list"), reverse("clinic:patient_list"),
                reverse("clinic:case_detail", args=[case.pk]), reverse("clinic:case_image", args=[case.pk]),
                reverse("clinic:lesion_detail", args=[referral.lesion_id]), reverse("referrals:triage"),
                reverse("clinic:dicom_import"), "/admin/"):
        assert client.get(url).status_code in (403, 404), url
    assert client.get(reverse("clinic:dashboard")).status_code == 302
    assert client.get("/api/patients/").status_code in (403, 404)
    assert client.post(reverse("referrals:answer", args=[referral.pk]),
                       {"action": "return", "message": "x"}).status_code == 403
    # A clinician sends no referral.
    client.force_login(alice)
    assert client.get(reverse("referrals:create")).status_code == 403


def test_a_referrer_role_needs_a_practice_and_no_clinic(practice, north):
    assert User(username="x", practice=practice).role == Role.REFERRER
    assert User(username="y", practice=practice, clinic=north).role == Role.CLINICIAN
    assert User(username="z").role == Role.NONE


def test_the_mail_reaches_a_real_smtp_server(client, dana, north, alice, settings, tmp_path,
                                            django_capture_on_commit_callbacks):
    """aiosmtpd, a real SMTP server process, delivering into a maildir."""
    port = free_port()
    box = tmp_path / "maildir"
    server = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                               "-c", "aiosmtpd.handlers.Mailbox", str(box)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=server)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        refer(client, dana, north)
        referral = Referral.objects.get()
        client.force_login(alice)
        with django_capture_on_commit_callbacks(execute=True):
            client.post(reverse("referrals:answer", args=[referral.pk]),
                        {"action": "book_routine", "message": "Seen in the routine clinic."})
    finally:
        server.terminate()
        server.wait(10)
    messages = [email.message_from_bytes(m.as_bytes()) for m in mailbox.Maildir(str(box), create=False)]
    assert len(messages) == 1
    assert messages[0]["Subject"] == f"Your referral {referral.pk} has been answered"
    assert "desk@riverside.example" in messages[0]["To"] and "RS-0042" not in messages[0].get_payload()


def test_another_clinic_cannot_see_a_practice_it_is_not_linked_to(practice, south):
    assert not Practice.objects.filter(clinics=south).exists()
    assert make_clinic("West").practices.count() == 0


def test_a_clinic_administrator_links_practices_and_makes_referrer_accounts(client, carol, north, south, alice):
    client.force_login(carol)
    url = reverse("referrals:practices")
    r = client.post(url, {"form": "link", "code": "OAK"})
    assert r.status_code == 200 and "give the new practice" in r.content.decode() and not Practice.objects.exists()
    client.post(url, {"form": "link", "code": "OAK", "name": "Oak Lane surgery", "email": "desk@oak.example"})
    oak = Practice.objects.get(code="OAK")
    assert list(oak.clinics.all()) == [north]
    assert AuditEvent.objects.filter(action="link_practice", object_id=str(oak.pk), clinic=north).exists()
    # Another clinic links the same practice by its code: one practice, two clinics.
    dave = make_user("dave", south, staff=True)
    client.force_login(dave)
    client.post(url, {"form": "link", "code": "oak"})
    assert Practice.objects.count() == 1 and set(oak.clinics.all()) == {north, south}
    client.force_login(carol)
    r = client.post(url, {"form": "account", "practice": oak.pk, "username": "owen", "email": "owen@oak.example",
                          "password": "short"})
    assert r.status_code == 200 and not User.objects.filter(username="owen").exists()
    client.post(url, {"form": "account", "practice": oak.pk, "username": "owen", "email": "owen@oak.example",
                      "password": "a long enough passphrase 7"})
    owen = User.objects.get(username="owen")
    assert owen.role == Role.REFERRER and owen.practice == oak and owen.check_password("a long enough passphrase 7")
    assert AuditEvent.objects.filter(action="create_referrer", object_id=str(owen.pk)).exists()
    page = client.get(url).content.decode()
    assert "Oak Lane surgery" in page and "desk@oak.example" in page
    # Unlinking stops new referrals to North; South's link stays.
    client.post(reverse("referrals:practice_unlink", args=[oak.pk]))
    assert list(oak.clinics.all()) == [south]
    client.force_login(dave)
    assert client.post(reverse("referrals:practice_unlink", args=[999])).status_code == 404
    client.force_login(alice)
    assert client.get(url).status_code == 403


def test_the_api_offers_what_the_pages_do(client, dana, erin, north, alice, version):
    """A referrer sends a referral over the API (multipart) and reads the answer; the clinic lists its open
    referrals in triage order and answers; FHIR R4 as fhir.resources reads it; outsiders get 404."""
    from fhir.resources.R4B.bundle import Bundle

    from tests.test_api import api, make_token

    referrer_token = make_token(client, dana)
    r = api(client, referrer_token, "post", "/api/v1/referrals/",
            data={**form_data(north), "images": [upload("a.jpg"), upload("b.jpg")]})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["checklist_score"] == 5 and len(body["images"]) == 2 and body["triage"] is None
    assert "case" not in body["images"][0]
    referral = Referral.objects.get(pk=body["id"])
    bad = api(client, referrer_token, "post", "/api/v1/referrals/", data={**form_data(north), "duration_months": -4})
    assert bad.status_code == 400 and "duration_months" in bad.json() and Referral.objects.count() == 1
    assert api(client, referrer_token, "get", "/api/v1/patients/").status_code == 403
    clinic_token = make_token(client, alice)
    listed = api(client, clinic_token, "get", "/api/v1/referrals/").json()
    assert [r["id"] for r in listed["results"]] == [referral.pk]
    first = listed["results"][0]
    assert first["triage"]["ai_tier"] == "no AI result yet" and "case" in first["images"][0]
    url = f"/api/v1/referrals/{referral.pk}/answer/"
    assert api(client, referrer_token, "post", url, data={"action": "return", "message": "x"},
               content_type="application/json").status_code == 403
    bad = api(client, clinic_token, "post", url, data={"action": "maybe", "message": "x"},
              content_type="application/json")
    assert bad.status_code == 400 and Answer.objects.count() == 0
    r = api(client, clinic_token, "post", url, data={"action": "return", "message": "Benign naevus; reassure."},
            content_type="application/json")
    assert r.status_code == 200 and r.json()["status"] == "returned"
    assert r.json()["answers"][0]["message"] == "Benign naevus; reassure."  # the answer it has just given
    assert api(client, clinic_token, "get", "/api/v1/referrals/").json()["results"] == []
    read = api(client, referrer_token, "get", f"/api/v1/referrals/{referral.pk}/").json()
    assert read["answers"][0]["message"] == "Benign naevus; reassure."
    assert read["status_display"] == "Returned with advice"
    for token, with_ai in ((clinic_token, True), (referrer_token, False)):
        bundle = api(client, token, "get", f"/api/v1/referrals/{referral.pk}/fhir/").json()
        Bundle.model_validate(bundle)
        kinds = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
        assert {"ServiceRequest", "Task", "Communication", "Observation", "Organization", "Patient"} <= set(kinds)
        assert kinds.count("Media") == 2 and ("DiagnosticReport" in kinds) == with_ai
        request = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
        assert request["priority"] == "urgent" and request["status"] == "completed"
        answer = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Communication")
        assert answer["payload"][0]["contentString"] == "Benign naevus; reassure."
    outsider = make_token(client, erin)
    for path in (f"/api/v1/referrals/{referral.pk}/", f"/api/v1/referrals/{referral.pk}/fhir/"):
        assert api(client, outsider, "get", path).status_code == 404
    assert api(client, outsider, "get", "/api/v1/referrals/").json()["results"] == []


def test_the_lesion_check_a_referral_waits_for_tells_a_photograph_from_a_lesion():
    """The function the worker runs for a referral form (skinweb.clinic.tasks.check_lesions), with the shipped
    model and its gate: a dataset lesion passes, a photograph does not (the round trip through a real worker is
    tests/test_browser.py's referral journey)."""
    import io
    from pathlib import Path

    import skimage
    from PIL import Image

    from classifier.modelfile import DEFAULT_MODEL_PATH
    from classifier.operatingpoint import DEFAULT_OPERATING_POINT_PATH
    from skinweb.clinic import classification
    from tests.conftest import ROOT

    assert classification.lesion_check([b"x"]) == [{"lesion": None, "score": None, "cutoff": None}]  # no model
    ModelVersion.import_file(DEFAULT_MODEL_PATH, operating_point=DEFAULT_OPERATING_POINT_PATH).publish(reason="test")
    lesion = (ROOT / "classifier" / "checkset" / "images" / "ISIC_0010441.jpg").read_bytes()
    photo = io.BytesIO()
    Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB").save(photo, "JPEG")
    answers = classification.lesion_check([lesion, photo.getvalue()])
    assert [a["lesion"] for a in answers] == [True, False]
    assert answers[1]["score"] > answers[1]["cutoff"] >= answers[0]["score"]


def test_the_clinics_home_page_says_how_many_referrals_wait(client, dana, north, alice, root):
    refer(client, dana, north)
    client.force_login(alice)
    page = client.get(reverse("clinic:dashboard")).content.decode()
    assert 'data-testid="n-referrals"' in page and "1 referral to triage" in page
    client.force_login(root)  # no clinic: neither referrals nor a "New patient" button
    page = client.get(reverse("clinic:dashboard")).content.decode()
    assert "n-referrals" not in page and "New patient</a>" not in page.split("</nav>")[1]


def test_a_clinic_administrator_sets_the_target_waits(client, carol, north):
    client.force_login(carol)
    url = reverse("referrals:practices")
    r = client.post(url, {"form": "targets", "referral_target_urgent_days": 0, "referral_target_routine_days": 90})
    assert r.status_code == 200 and "Between 1 and 365" in r.content.decode()
    client.post(url, {"form": "targets", "referral_target_urgent_days": 7, "referral_target_routine_days": 60})
    north.refresh_from_db()
    assert (north.referral_target_urgent_days, north.referral_target_routine_days) == (7, 60)
    event = AuditEvent.objects.get(action="referral_targets")
    assert event.detail["old"]["referral_target_urgent_days"] == 14 and event.detail["new"][
        "referral_target_urgent_days"] == 7


def test_better_images_over_the_api(client, dana, north, alice):
    from tests.test_api import api, make_token

    refer(client, dana, north)
    referral = Referral.objects.get()
    token = make_token(client, dana)
    url = f"/api/v1/referrals/{referral.pk}/images/"
    assert api(client, token, "post", url, data={"images": [upload("x.jpg")]}).status_code == 400  # not asked
    client.force_login(alice)
    client.post(reverse("referrals:answer", args=[referral.pk]), {"action": "more_images", "message": "Sharper."})
    assert api(client, token, "post", url, data={"images": [upload("x.jpg", data=b"junk")]}).status_code == 400
    r = api(client, token, "post", url, data={"images": [upload("sharp.jpg")], "note": "retaken"})
    assert r.status_code == 200 and r.json()["status"] == "open" and len(r.json()["images"]) == 3
    clinic_token = make_token(client, alice)
    assert api(client, clinic_token, "post", url, data={"images": [upload("y.jpg")]}).status_code == 403


def test_a_referral_is_sent_unchecked_when_no_worker_answers_in_time(client, dana, north, redis_server, settings):
    """A real broker with no worker listening: the form waits REFERRAL_CHECK_SECONDS, then sends the referral and
    records that its images were not checked (the worker withholds a non-lesion image's result later)."""
    settings.REFERRAL_CHECK_SECONDS = 1
    r = refer(client, dana, north)
    referral = Referral.objects.get()
    assert r.status_code == 302 and referral.lesion.cases.count() == 2
    assert AuditEvent.objects.get(action="refer").detail["lesion_check"] == "not done"
