"""A dermatologist's journey in a real browser (Debian's Chromium driven by Playwright) against the
real stack: Django's live server, a real redis-server, a real Celery worker process and the starter
model. Every page is checked with axe-core (no serious or critical accessibility violations) and
saved as a screenshot under tests/artifacts/ (SKINWEB_TEST_ARTIFACTS to put them elsewhere).
"""

import base64
import datetime
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone
from django_otp.oath import TOTP
from PIL import Image
from playwright.sync_api import expect
from pypdf import PdfReader

from classifier.modelfile import DEFAULT_MODEL_PATH
from classifier.operatingpoint import DEFAULT_OPERATING_POINT_PATH
from skinweb.clinic.models import Case
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_clinic, make_user
from tests.conftest import ROOT, WorkerProcess
from tests.oidc_provider import start_provider

CHROMIUM = "/usr/bin/chromium"
FIXTURE_IMAGES = sorted((ROOT / "tests" / "fixtures" / "isic" / "images").glob("*.jpg"))
# A shipped check image the starter model scores in the middle of its borderline band (p 0.19 in
# fp32; band 0.037-0.325; int8 moves a probability by up to about 0.03).
BORDERLINE = ROOT / "classifier" / "checkset" / "images" / "ISIC_0010441.jpg"
ARTIFACTS = Path(os.environ.get("SKINWEB_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
PASSWORD = "a long browser-test password"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (make test installs it)")


@pytest.fixture
def browser_page(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls this test makes between
    # browser steps are ordinary blocking calls, which Django must be told are fine here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        context.close()
        browser.close()
        # The test's ORM calls ran while Playwright's greenlets were switching; their connection is
        # not the session's. Closed here, before PostgreSQL is asked to drop the test database.
        connections.close_all()


@pytest.fixture
def stack(live_server, worker_env, settings, tmp_path):
    """The starter model published with its shipped operating point (as `make run` does), and a real worker on
    the inference queue."""
    version = ModelVersion.import_file(DEFAULT_MODEL_PATH, operating_point=DEFAULT_OPERATING_POINT_PATH)
    version.publish(reason="browser test")
    # Its reference library of similar lesions, built from the 12 fixture images as the registry's job
    # does (the shipped differential head comes with the model file).
    from skinweb.models_registry import reference

    settings.REFERENCE_DATASET = str(ROOT / "tests" / "fixtures" / "isic")
    assert "built" in reference.build(version)
    # No calibration data: the worker runs PyTorch fp32 at once instead of building int8 artefacts.
    worker = WorkerProcess({**worker_env, "TRAINING_DATASETS": ""}, tmp_path / "worker.log",
                           queues="inference,explain").start()
    yield live_server.url
    worker.stop()


class Journey:
    def __init__(self, page, base):
        self.page, self.base, self.shots = page, base, []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def go(self, path):
        self.page.goto(self.base + path)

    def check(self, name):
        """axe-core on the page as it is now, then a full-page screenshot."""
        from axe_playwright_python.sync_playwright import Axe

        results = Axe().run(self.page)
        serious = [(v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:3])
                   for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert not serious, f"accessibility violations on {name}: {serious}"
        path = ARTIFACTS / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)

    def log_in(self, username, then="/"):
        self.go("/accounts/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(self.base + then)


def test_dermatologist_journey(browser_page, stack, worker_env, tmp_path):
    page = browser_page
    north = make_clinic("North Dermatology")
    alice = make_user("alice", north)
    alice.set_password(PASSWORD)
    alice.save()
    root = make_user("root", None, superuser=True)
    root.set_password(PASSWORD)
    root.save()
    j = Journey(page, stack)

    # Log in: the clinic's home page.
    j.go("/accounts/login/")
    j.check("login")
    j.log_in("alice")
    assert page.get_by_role("heading", name="North Dermatology").is_visible()
    j.check("dashboard-empty")

    # A patient and a lesion.
    page.get_by_role("link", name="New patient").first.click()
    page.get_by_label("Identifier").fill("BR-0001")
    page.get_by_label("Birth year").fill("1968")
    page.get_by_label("Sex").select_option("female")
    j.check("patient-form")
    page.get_by_role("button", name="Create patient").click()
    page.get_by_label("Anatomical site").select_option(index=1)
    page.get_by_label("Label").fill("left scapula")
    page.get_by_role("button", name="Record lesion").click()
    expect(page.get_by_role("heading", name="Upload dermoscopic images")).to_be_visible()

    # A file that is not an image gets its own message and leaves nothing behind.
    bogus = tmp_path / "referral-letter.jpg"
    bogus.write_bytes(b"%PDF-1.4 this is not a JPEG")
    page.set_input_files("input[type=file]", [str(bogus)])
    page.get_by_role("button", name="Upload and classify").click()
    page.get_by_text("Not uploaded:").wait_for()
    assert "referral-letter.jpg" in page.locator("[data-upload-list]").inner_text()
    assert page.locator("[data-upload-list] progress").count() == 0  # no full bar beside a refusal
    assert Case.objects.count() == 0

    # Two images at once: previews and progress per file, then both results without a reload.
    page.set_input_files("input[type=file]", [str(p) for p in FIXTURE_IMAGES[:2]])
    expect(page.locator("[data-upload-list] li")).to_have_count(2)
    page.get_by_role("button", name="Upload and classify").click()
    results = page.locator("[data-testid=upload-result]")
    for i in range(2):
        results.nth(i).locator(".badge", has_text="ign").or_(
            results.nth(i).locator(".badge", has_text="alignant")
        ).wait_for()
    assert Case.objects.filter(status=Case.Status.DONE).count() == 2
    # The lesion's timeline on the same page shows the new visit and both results, without a reload.
    timeline = page.locator("#lesion-timeline")
    timeline.get_by_text("2 images").wait_for()
    page.wait_for_function("document.querySelectorAll('#lesion-timeline .badge').length >= 2")
    assert "1 visit" in timeline.locator("h2").inner_text()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # the same page, never reloaded
    j.check("upload-results")

    # The first case: result with its threshold, heat map overlay toggled and faded.
    page.locator("[data-upload-list] a").first.click()
    page.get_by_text("Decision support, not a diagnosis").wait_for()
    result = page.get_by_test_id("result")
    assert result.is_visible() and "threshold of" in result.inner_text()
    assert result.get_attribute("data-certainty") in ("benign", "malignant", "borderline")
    toggle = page.get_by_role("switch", name="Show heat map")
    toggle.wait_for(timeout=60_000)  # the heat map follows the result
    overlay = page.locator("[data-heatmap]")
    assert overlay.is_hidden()
    toggle.check()
    assert overlay.is_visible()
    page.get_by_label("Opacity").fill("30")
    assert overlay.evaluate("el => getComputedStyle(el).opacity") == "0.3"
    j.check("case-heatmap")
    toggle.uncheck()
    assert overlay.is_hidden()
    toggle.focus()
    page.keyboard.press("Space")  # the switch works from the keyboard too
    assert overlay.is_visible()

    # The differential and the nearest confirmed lesions (issue 32): the upload is one of the reference
    # library's images, so it comes first, 100% similar; it opens beside the upload.
    differential = page.get_by_test_id("differential")
    assert differential.is_visible() and "Melanoma" in differential.inner_text()
    nearest = page.get_by_test_id("similar-dataset").locator("li").first
    assert "100% similar" in nearest.inner_text()
    assert "No case of your clinic" in page.get_by_test_id("similar-clinic-message").inner_text()
    nearest.get_by_role("link").click()
    page.get_by_test_id("compare").wait_for()
    assert page.locator("[data-testid=compare] img").nth(1).evaluate("img => img.naturalWidth") > 0
    j.check("case-compare")
    page.go_back()
    page.get_by_text("Decision support, not a diagnosis").wait_for()

    # Feedback.
    page.get_by_label("Yes, I agree").check()
    page.get_by_label("Clinical diagnosis").select_option("nevus")
    page.get_by_label("Management").select_option("monitor")
    page.get_by_role("button", name="Save feedback").click()
    page.get_by_text("Feedback saved (revision 1)").wait_for()
    case_url = page.url
    page.get_by_role("button", name="Flag for expert review").click()  # to the administrators' relabel queue
    page.get_by_text("Sent to the relabel queue").wait_for()

    # The PDF report opens and holds the case.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download PDF report").click()
    pdf = PdfReader(io.BytesIO(Path(download.value.path()).read_bytes()))
    text = " ".join(pdf.pages[0].extract_text().split())
    assert "BR-0001" in text and "left scapula" in text and "not a diagnosis" in text and "Nevus" in text
    shutil.copyfile(download.value.path(), ARTIFACTS / "case-report.pdf")

    # The history, filtered to cases with feedback: just this one.
    page.get_by_role("link", name="Cases").click()
    page.get_by_label("Feedback").select_option("given")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**feedback=given**")
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    assert "BR-0001" in rows.first.inner_text()
    j.check("history-filtered")

    # The two images were uploaded today: one visit. They were in fact taken at a visit a month ago.
    page.goto(case_url)
    page.get_by_role("link", name="left scapula").first.click()
    page.wait_for_url("**/lesions/*/")
    lesion_url = page.url
    expect(page.locator(".timeline-visit")).to_have_count(1)
    assert "2 images" in page.locator(".timeline-visit").inner_text()
    earlier = (timezone.localdate() - datetime.timedelta(days=30)).isoformat()
    for case in Case.objects.order_by("pk"):
        j.go(f"/cases/{case.pk}/")
        page.get_by_label("Taken on").fill(earlier)
        page.get_by_role("button", name="Correct the date").click()
        page.get_by_text("now belongs to the visit of").wait_for()

    # Today's visit: a third image, borderline for the starter model (p 0.19 against its threshold
    # 0.184, inside its band). The timeline compares the two visits side by side.
    page.goto(lesion_url)
    page.set_input_files("input[type=file]", [str(BORDERLINE)])
    page.get_by_role("button", name="Upload and classify").click()
    page.locator("[data-testid=upload-result] .badge", has_text="borderline").wait_for(timeout=60_000)
    timeline = page.locator("#lesion-timeline")
    timeline.locator("h2", has_text="2 visits").wait_for()
    page.locator(".trend-chart").wait_for(timeout=60_000)  # once the new visit's result is in: two points
    visits = page.locator(".timeline-visit")
    assert "2 images" in visits.first.inner_text() and visits.last.inner_text().count("Open case") == 1
    j.check("lesion-timeline")

    # A borderline result looks borderline, not like the confident red or green banner.
    page.locator("[data-upload-list] a").first.click()
    result = page.get_by_test_id("result")
    result.wait_for()
    assert result.get_attribute("data-certainty") == "borderline" and "borderline" in result.inner_text().lower()
    j.check("borderline-result")

    # A blank picture, uploaded by mistake: scored, but with a warning; then removed with a reason.
    page.goto(lesion_url)
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (640, 480), (222, 196, 170)).save(blank, quality=90)
    page.set_input_files("input[type=file]", [str(blank)])
    page.get_by_role("button", name="Upload and classify").click()
    page.locator("[data-testid=upload-result] .badge", has_text="check image").wait_for(timeout=60_000)
    page.locator("[data-upload-list] a").first.click()
    warning = page.get_by_test_id("image-warnings")
    warning.wait_for()
    assert "almost uniform: no lesion visible" in warning.inner_text()
    j.check("blank-warning")
    page.get_by_text("Uploaded by mistake? Remove the image").click()
    page.get_by_label("Reason").fill("blank picture, not the lesion")
    page.get_by_role("button", name="Remove the image").click()
    page.get_by_text("blank.jpg removed").wait_for()
    assert page.url == lesion_url and "blank.jpg" not in page.locator("#lesion-timeline").inner_text()
    assert page.locator(".timeline-visit").last.inner_text().count("Open case") == 1

    # On a tablet (portrait): the same page, one column, still accessible.
    page.set_viewport_size({"width": 768, "height": 1024})
    page.goto(case_url)
    assert page.get_by_role("link", name="Download PDF report").is_visible()
    j.check("case-tablet")
    page.set_viewport_size({"width": 1280, "height": 900})

    # The dashboard counts the reviewed case out of the waiting list (and the removed one out of everything).
    page.get_by_role("link", name="Home").click()
    page.wait_for_url(j.base + "/")
    assert page.get_by_test_id("n-waiting").inner_text() == "2"
    j.check("dashboard")

    # An administrator relabels the case for retraining.
    page.get_by_role("button", name="Log out").click()
    j.log_in("root")
    j.go("/manage/relabel/")
    case = Case.objects.filter(feedback__isnull=False).get()
    row = page.locator("tr", has=page.locator(f"a[href='/cases/{case.pk}/']"))
    row.get_by_role("button", name="Malignant").click()
    page.get_by_text("Ground truth malignant").wait_for()
    case.refresh_from_db()
    assert case.truth_label == "malignant" and case.truth_set_by == root
    j.check("relabel")

    # The removed picture waits in the administrators' list with its reason, and can be restored.
    page.get_by_role("link", name="Removed").click()
    page.wait_for_url("**/manage/removed/")
    row = page.get_by_test_id("removed-row")
    expect(row).to_have_count(1)
    assert "blank picture, not the lesion" in row.inner_text() and "alice" in row.inner_text()
    j.check("removed-images")
    row.get_by_role("button", name="Restore").click()
    page.get_by_text("blank.jpg restored").wait_for()
    assert Case.objects.count() == 4

    # A program of alice's: she makes an API token (shown once), the program reads her cases over real
    # HTTP with it, and the API's docs page renders its operations under the site's CSP.
    page.get_by_role("button", name="Log out").click()
    j.log_in("alice")
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.get_by_role("link", name="API", exact=True).click()
    page.get_by_label("Name").fill("browser test bridge")
    page.get_by_role("button", name="Make a token").click()
    token = page.get_by_test_id("new-token").locator("code").inner_text().strip()
    j.check("api-tokens")
    request = urllib.request.Request(j.base + "/api/v1/cases/?status=done",
                                     headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = json.load(answer)
    assert body["count"] == Case.objects.filter(status="done").count() >= 3
    published = ModelVersion.objects.published().version
    # Every result is the published version's; an image that is not a lesion has none, and says why.
    assert all(c["result"]["model_version"] == published for c in body["results"] if c["result"])
    assert all(c["result_withheld"] for c in body["results"] if not c["result"])
    j.go("/api/docs/")
    page.locator(".opblock-summary-path", has_text="/api/v1/cases/{id}/").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=True)  # Swagger UI's own page: no axe
    assert not blocked, blocked

    # North now requires two-factor login: at her next login alice sets up an authenticator app (the test
    # computes the app's code from the key the page shows), keeps her recovery codes, and is in.
    north.require_two_factor = True
    north.save()
    j.go("/")
    page.get_by_role("button", name="Log out").click()
    j.log_in("alice", then="/accounts/two-factor/setup/**")
    key = page.get_by_test_id("secret").inner_text().replace(" ", "")
    j.check("two-factor-setup")
    app = TOTP(base64.b32decode(key + "=" * (-len(key) % 8)))
    page.get_by_label("Code from the app").fill(f"{app.token():06d}")
    page.get_by_role("button", name="Turn on two-factor login").click()
    expect(page.get_by_test_id("recovery-codes").locator("li")).to_have_count(10)
    page.get_by_role("link", name="I have kept them: continue").click()
    page.wait_for_url(j.base + "/")
    assert len(j.shots) == 16


def test_single_sign_on_through_the_hospital_then_the_second_factor(browser_page, live_server, settings, tmp_path):
    """A nurse of North logs in with the hospital's account (a real OpenID Connect provider in its own
    process), gets her skinweb account from its claims, then sets up the second factor North requires."""
    page, j = browser_page, Journey(browser_page, live_server.url)
    process, provider = start_provider(tmp_path, live_server.url + "/accounts/sso/callback/")
    try:
        settings.OIDC_PROVIDERS = [{"name": "hospital", "label": "St Elsewhere", "issuer": f"{provider}/o",
                                    "client_id": "skinweb", "client_secret": "skinweb-secret"}]
        north = make_clinic("North")
        north.require_two_factor = True
        north.save()
        j.go("/accounts/login/")
        page.get_by_role("link", name="Log in with St Elsewhere").click()
        page.get_by_label("Hospital username").fill("nurse")
        page.get_by_label("Hospital password").fill("nurse-pass")
        page.get_by_role("button", name="Sign in to the hospital").click()
        page.wait_for_url(live_server.url + "/accounts/two-factor/setup/**")
        key = page.get_by_test_id("secret").inner_text().replace(" ", "")
        app = TOTP(base64.b32decode(key + "=" * (-len(key) % 8)))
        page.get_by_label("Code from the app").fill(f"{app.token():06d}")
        page.get_by_role("button", name="Turn on two-factor login").click()
        page.get_by_role("link", name="I have kept them: continue").click()
        page.wait_for_url(live_server.url + "/")
        assert "Nurse · North" in page.locator("nav").inner_text()  # the given_name claim, the clinic claim
        j.check("sso-dashboard")
    finally:
        process.kill()


def test_referral_journey(browser_page, stack, settings, tmp_path):
    """Issue 45 in a browser: a referrer sends a referral with two images and the checklist (bad input first);
    the dermatologist finds it at the top of the triage list when it is the riskiest, returns it with advice;
    the referrer reads the answer; the mail reached a real SMTP server; outsiders get 404."""
    import email
    import mailbox
    import subprocess
    import sys

    from skinweb.accounts.models import User
    from skinweb.launcher import free_port, wait_for_port
    from skinweb.referrals.models import Practice, Referral
    from tests.builders import make_lesion, make_patient

    page = browser_page
    north, south = make_clinic("North Dermatology"), make_clinic("South Dermatology")
    riverside = Practice.objects.create(name="Riverside Surgery", code="RIV", email="desk@riverside.example")
    riverside.clinics.add(north)
    hillside = Practice.objects.create(name="Hillside Surgery", code="HIL")
    hillside.clinics.add(south)
    users = {}
    for name, fields in (("alice", {"clinic": north, "email": "alice@north.example"}), ("bob", {"clinic": south}),
                         ("dana", {"practice": riverside}), ("erin", {"practice": hillside})):
        users[name] = User.objects.create_user(name, password=PASSWORD, **fields)
    # An older referral the AI found benign: the new one, borderline, must go above it.
    older = Referral.objects.create(practice=riverside, clinic=north, patient_identifier="OLD-1", birth_year=1950,
                                    sex="male", site="head/neck", duration_months=12, urgency="routine",
                                    lesion=make_lesion(make_patient(north, "RIV-OLD-1")),
                                    created_at=timezone.now() - datetime.timedelta(days=3))
    Referral.objects.filter(pk=older.pk).update(ai_tier=Referral.Tier.BENIGN, ai_probability=0.004)
    port = free_port()
    box = tmp_path / "maildir"
    smtp = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c",
                             "aiosmtpd.handlers.Mailbox", str(box)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=smtp)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.REFERRAL_CHECK_SECONDS = 60  # the worker loads the starter for the first check
        j = Journey(page, stack)

        # The referrer: their home is their practice's referrals.
        j.log_in("dana", then="/referrals/")
        j.check("referrer-home")
        page.get_by_role("link", name="New referral").first.click()

        def fill(duration, files):
            page.get_by_label("The practice's patient identifier").fill("RS-0042")
            page.get_by_label("Birth year").fill("1961")
            page.get_by_label("Sex").select_option("female")
            page.get_by_label("Anatomical site").select_option("posterior torso")
            page.get_by_label("Change in size").check()
            page.get_by_label("Irregular colour or change in colour").check()
            page.get_by_label("Noticed for (months)").fill(duration)
            page.get_by_label("History").fill("Darker over the summer, itchy.")
            page.get_by_label("Urgent (suspected skin cancer)").check()
            page.set_input_files("input[name=images]", [str(f) for f in files])
            page.get_by_role("button", name="Send the referral").click()

        # Bad input: a duration out of range, then a file that is not an image: a message, nothing kept.
        fill("5000", [BORDERLINE])
        page.get_by_text("at most 1200").wait_for()
        bogus = tmp_path / "letter.jpg"
        bogus.write_bytes(b"%PDF-1.4 not an image")
        fill("4", [BORDERLINE, bogus])
        page.get_by_text("letter.jpg").first.wait_for()
        # A photograph that is not a dermoscopic lesion (scikit-image's astronaut): the worker's lesion check.
        import skimage

        photo = tmp_path / "holiday.jpg"
        Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB").save(photo)
        fill("4", [BORDERLINE, photo])
        page.get_by_text("holiday.jpg: does not look like a dermoscopic image").wait_for(timeout=90_000)
        assert Referral.objects.count() == 1 and Case.objects.count() == 0
        j.check("referral-refused")
        fill("4", [BORDERLINE, FIXTURE_IMAGES[0]])
        page.get_by_test_id("referral-status").wait_for()
        referral = Referral.objects.exclude(pk=older.pk).get()
        assert "Waiting for review" in page.get_by_test_id("referral-status").inner_text()
        assert referral.checklist_score == 4 and referral.lesion.cases.count() == 2
        j.check("referral-sent")

        # The worker classifies both images; the referral's place in the list follows.
        deadline = timezone.now() + datetime.timedelta(minutes=5)
        while referral.lesion.cases.exclude(status=Case.Status.DONE).exists() and timezone.now() < deadline:
            page.wait_for_timeout(500)
        referral.refresh_from_db()
        assert referral.ai_tier >= Referral.Tier.BORDERLINE, referral.ai_tier
        page.get_by_role("button", name="Log out").click()

        # The dermatologist: the new referral first, the benign one below; answer with advice.
        j.log_in("alice")
        page.get_by_role("link", name="Referrals", exact=True).click()
        rows = page.locator("[data-testid=triage] tbody tr")
        expect(rows).to_have_count(2)
        assert rows.first.get_attribute("data-referral") == str(referral.pk)
        j.check("triage")
        rows.first.get_by_role("link").click()
        expect(page.get_by_test_id("referral-images").locator("img")).to_have_count(2)
        page.get_by_label("Return to the practice with advice").check()
        page.get_by_label("Message to the practice").fill("Benign naevus with sun changes. Reassure; photograph "
                                                          "again in 3 months.")
        j.check("referral-review")
        page.get_by_role("button", name="Send the answer to the practice").click()
        page.get_by_text("The practice has been told").wait_for()
        expect(page.locator("[data-testid=triage] tbody tr")).to_have_count(1)
        page.get_by_role("button", name="Log out").click()

        # The referrer reads the answer.
        j.log_in("dana", then="/referrals/")
        page.get_by_role("link", name=str(referral.pk), exact=True).click()
        assert "Returned with advice" in page.get_by_test_id("referral-status").inner_text()
        assert "Reassure; photograph again" in page.get_by_test_id("answer").inner_text()
        assert page.get_by_test_id("referral-images").locator(".badge").count() == 0  # no AI result for the practice
        j.check("referral-answered")
        page.get_by_role("button", name="Log out").click()

        # Outsiders: another practice's referrer and another clinic's dermatologist.
        for outsider in ("erin", "bob"):
            j.log_in(outsider, then="/referrals/" if outsider == "erin" else "/")
            response = page.goto(f"{stack}/referrals/{referral.pk}/")
            assert response.status == 404
            page.goto(stack + "/")
            page.get_by_role("button", name="Log out").click()
    finally:
        smtp.terminate()
        smtp.wait(10)
    mails = [email.message_from_bytes(m.as_bytes()) for m in mailbox.Maildir(str(box), create=False)]
    subjects = sorted(m["Subject"] for m in mails)
    assert subjects == ["A new referral is waiting for review", f"Your referral {referral.pk} has been answered"]
    assert all("RS-0042" not in m.get_payload() for m in mails)


def test_the_journey_in_french(browser_page, stack):
    """Issue 46: a clinician whose browser asks for French chooses French on the account page, records a patient,
    uploads an image, reads the result, gives feedback and downloads the report, all with no English word
    (tests/test_i18n.ENGLISH) on the pages or in the PDF. Screenshots in <artifacts>/french/."""
    from tests.test_i18n import ENGLISH, visible_words

    page = browser_page
    page.context.set_extra_http_headers({"Accept-Language": "fr-FR,fr;q=0.9"})
    clinic = make_clinic("Clinique du Parc")
    claire = make_user("claire", clinic)
    claire.set_password(PASSWORD)
    claire.save()
    j = Journey(page, stack)
    shots = ARTIFACTS / "french"
    shots.mkdir(parents=True, exist_ok=True)
    from classifier.reference import SOURCES

    # The records' own data, and the names of public datasets and their licences (proper names, untranslated).
    own = ["claire", "Clinique du Parc", "FR-0001", "omoplate gauche", FIXTURE_IMAGES[0].name, "skinweb",
           *sorted({text for name, licence, _ in SOURCES.values() for text in (name, licence)}, key=len, reverse=True)]

    def look(name):
        english = visible_words(page.content(), own) & ENGLISH
        assert not english, f"English on the French page {name}: {sorted(english)}"
        # Longer words than English ones wrap; nothing runs off the side of the page.
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, name
        j.check(f"fr-{name}")
        shutil.copyfile(j.shots[-1], shots / j.shots[-1].name)

    j.go("/accounts/login/")
    assert page.get_by_role("heading", name="Se connecter à skinweb").is_visible()
    look("login")
    page.get_by_label("Nom d’utilisateur").fill("claire")
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    page.wait_for_url(stack + "/")
    look("dashboard")

    # The preference, kept on the account, wins over the browser from now on.
    page.get_by_role("link", name="Compte").click()
    page.get_by_label("Langue des pages, des comptes rendus et des e-mails").select_option("fr")
    page.get_by_role("button", name="Enregistrer").click()
    page.get_by_text("Votre langue est enregistrée.").wait_for()
    claire.refresh_from_db()
    assert claire.language == "fr"
    look("account")

    page.get_by_role("link", name="Nouveau patient").first.click()
    page.get_by_label("Identifiant").fill("FR-0001")
    page.get_by_label("Année de naissance").fill("1958")
    page.get_by_label("Sexe").select_option("male")
    look("patient-form")
    page.get_by_role("button", name="Créer le patient").click()
    page.get_by_text("Patient FR-0001 créé. Ajoutez maintenant une lésion.").wait_for()
    page.get_by_label("Siège anatomique").select_option("posterior torso")
    page.get_by_label("Libellé").fill("omoplate gauche")
    page.get_by_role("button", name="Enregistrer la lésion").click()
    page.get_by_role("heading", name="Téléverser des images dermoscopiques").wait_for()

    page.set_input_files("input[type=file]", [str(FIXTURE_IMAGES[0])])
    page.get_by_role("button", name="Téléverser et classer").click()
    badge = page.locator("[data-testid=upload-result] .badge")
    badge.filter(has_text="bénin").or_(badge.filter(has_text="malin")).or_(badge.filter(has_text="limite")).first.wait_for()
    look("upload")

    page.locator("[data-upload-list] a").first.click()
    page.get_by_text("Aide à la décision, pas un diagnostic").wait_for()
    result = page.get_by_test_id("result").inner_text()
    assert "seuil de" in result and "Probabilité de malignité" in result
    probability = page.get_by_test_id("probability").inner_text()
    assert "," in probability and "." not in probability  # 0,873: the French decimal comma
    page.get_by_role("switch", name="Afficher la carte de chaleur").wait_for(timeout=60_000)
    look("case")

    page.get_by_label("Oui, je suis d'accord").check()
    page.get_by_label("Diagnostic clinique").select_option("nevus")
    page.get_by_label("Prise en charge").select_option("monitor")
    page.get_by_role("button", name="Enregistrer l'avis").click()
    page.get_by_text("Avis enregistré (révision 1).").wait_for()
    look("feedback")

    with page.expect_download() as download:
        page.get_by_role("link", name="Télécharger le compte rendu PDF").click()
    text = " ".join(PdfReader(io.BytesIO(Path(download.value.path()).read_bytes())).pages[0].extract_text().split())
    assert "Compte rendu skinweb" in text and "Aide à la décision, pas un diagnostic" in text and "Naevus" in text
    english = visible_words(text, own) & ENGLISH
    assert not english, f"English in the French PDF: {sorted(english)}"
    shutil.copyfile(download.value.path(), shots / "compte-rendu.pdf")

    page.get_by_role("link", name="Cas", exact=True).click()
    page.get_by_role("heading", name="Historique des cas").wait_for()
    look("history")
