"""Who can reach what. The URL list is read from the URLconf, so a new view cannot be missed.

Roles (README, "Roles"): anonymous; alice, a clinician of the North clinic which owns the records;
bob, a clinician of the South clinic; carol, North's clinic administrator; dave, South's clinic
administrator; root, the platform administrator (a superuser of no clinic); dana, a referrer of the practice
that sent North the world's referral; erin, a referrer of another practice (referring to South).
"""

import pytest
from django.contrib import admin
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from skinweb.accounts.models import User
from skinweb.audit.models import AuditEvent, clinic_id_of, record
from skinweb.clinic.models import Case, Feedback, Lesion, Patient
from skinweb.models_registry.models import ModelVersion
from skinweb.referrals.models import Answer, Referral
from tests.builders import make_case, make_lesion, make_patient, make_referral_cast, make_user

pytestmark = pytest.mark.django_db

# Status of a GET by a user of the clinic that owns the record. Every named URL outside the
# admin must be listed: test_every_url_is_in_the_matrix fails otherwise.
OWNER_GET = {
    "clinic:dashboard": 200,
    "clinic:case_list": 200,
    "clinic:case_export": 200,
    "clinic:case_report": 200,
    "clinic:case_dicom": 200,
    "clinic:dicom_import": 200,
    "clinic:case_heatmap": 404,  # the failed case has no prediction, so no heat map
    "clinic:patient_list": 200,
    "clinic:patient_create": 200,
    "clinic:patient_detail": 200,
    "clinic:patient_edit": 200,
    "clinic:lesion_create": 200,
    "clinic:lesion_detail": 200,
    "clinic:lesion_edit": 200,
    "clinic:lesion_upload": 200,
    "clinic:case_detail": 200,
    "clinic:case_status": 200,
    "clinic:case_feedback": 200,
    "clinic:case_retry": 405,  # POST only
    "clinic:case_image": 200,
    "clinic:case_flag": 405,  # POST only
    "clinic:case_taken": 405,  # POST only
    "clinic:case_move": 405,  # POST only
    "clinic:case_remove": 405,  # POST only
    "clinic:case_release_score": 405,  # POST only
    "clinic:case_compare": 404,  # the failed case has no result, so nothing similar to compare with
    "clinic:reference_image": 404,  # the version has no reference library built
    "two_factor_verify": 302,  # no authenticator set up: sent to the security page
    "two_factor_setup": 200,
    "account_security": 200,
    "api_docs": 200,
    "api_tokens": 200,
    "api_token_revoke": 405,  # POST only
    "login": 302,  # already logged in: sent on
    "logout": 405,  # POST only
    "referrals:mine": 302,  # a clinic's member: sent to the triage list
    "referrals:create": 403,  # referring practices only
    "referrals:triage": 200,
    "referrals:detail": 200,
    "referrals:answer": 405,  # POST only
    "referrals:more_images": 405,  # POST only
    "referrals:image": 200,
    "referrals:overview": 404,  # the world's referral has no overview photograph
    "referrals:practices": 200,  # clinic administrators (expected_practices)
    "referrals:practice_unlink": 405,  # POST only
}
# What a referrer gets on their own practice's pages (the world's referral is dana's); every other page but the
# account's answers 404 (skinweb.referrals.access), the home page sends them to their referrals.
REFERRER_GET = {"referrals:mine": 200, "referrals:create": 200, "referrals:triage": 403, "referrals:detail": 200,
                "referrals:answer": 405, "referrals:more_images": 405, "referrals:image": 200,
                "referrals:overview": 404, "clinic:dashboard": 302, "login": 302, "logout": 405,
                "two_factor_verify": 302, "two_factor_setup": 200, "account_security": 200, "api_tokens": 200,
                "api_token_revoke": 405, "api_docs": 200}
PUBLIC = {"login", "logout"}
# Single sign-on's pages answer everyone alike (no provider is configured here: tests/test_sso.py has one).
SSO_GET = {"sso_login": 404, "sso_callback": 302, "sso_refused": 403,
           "favicon": 302}  # and /favicon.ico, sent to the static copy
# The administrators' pages: 403 for clinicians, this for an administrator allowed there (the relabel
# queue: clinic administrators and the platform administrator; the registry: the platform administrator).
STAFF_GET = {
    "clinic:relabel_queue": 200,
    "clinic:relabel": 405,
    "clinic:training_switch": 405,
    "clinic:removed_list": 200,
    "clinic:removed_image": 200,
    "clinic:case_restore": 405,
    "manage:model_list": 200,
    "manage:retrain": 405,
    "manage:model_detail": 200,
    "manage:publish": 405,
    "manage:cancel": 405,
    "manage:shadow": 405,
}


def project_urls(patterns=None, prefix="", namespace=""):
    """(name, route) of every named URL outside the admin site and the API (tests/test_api_access.py)."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            if p.app_name in ("admin", "api"):
                continue
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from project_urls(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern) and p.name:
            yield f"{namespace}{p.name}", prefix + str(p.pattern)


ROLES = ["anonymous", "alice", "bob", "carol", "dave", "root", "dana", "erin"]
REFERRERS = {"dana", "erin"}
OWNERS = {"alice", "carol"}  # members of North, which owns the world's records


@pytest.fixture
def world(client, north, south, alice, bob, carol, root):
    client.logout()  # each test logs in whom it needs
    dave = make_user("dave", south, staff=True)
    patient = make_patient(north, "N-001")
    lesion = make_lesion(patient)
    case = make_case(lesion, alice, status=Case.Status.FAILED, failure_reason="test")
    south_case = make_case(make_lesion(make_patient(south, "S-001")), bob, status=Case.Status.FAILED,
                           failure_reason="test")
    removed = make_case(lesion, alice)
    removed.remove(alice, "duplicate")
    record(None, "view", case)
    record(None, "view", south_case)
    version = ModelVersion.objects.create(version="v-access", filename="v.safetensors", arch="vgg16", input_size=64,
                                          threshold=0.5, status=ModelVersion.Status.CANDIDATE)
    return {"alice": alice, "bob": bob, "carol": carol, "dave": dave, "root": root, "north": north, "south": south,
            "patient": patient, "lesion": lesion, "case": case, "south_case": south_case, "version": version,
            "removed": removed, **make_referral_cast(north, south)}


def url_for(name, route, world):
    if name == "clinic:reference_image":
        return reverse(name, kwargs={"version": world["version"].pk, "position": 0})
    if name == "sso_login":
        return reverse(name, kwargs={"name": "hospital"})
    if name == "api_token_revoke":
        return reverse(name, kwargs={"key": "skw_0123456789a"})
    if name == "clinic:case_compare":
        return reverse(name, kwargs={"pk": world["case"].pk, "ref": "d0"})
    if name == "referrals:image":
        return reverse(name, kwargs={"pk": world["referral"].pk, "case_pk": world["referred_case"].pk})
    if name == "referrals:practice_unlink":
        return reverse(name, kwargs={"pk": world["referral"].practice_id})
    if "<int:pk>" not in route:
        return reverse(name)
    owner = {"patients/": "patient", "lesions/": "lesion", "cases/": "case", "manage/relabel/": "case",
             "manage/removed/": "removed", "manage/models/": "version", "referrals/": "referral"}
    kind = next(v for k, v in owner.items() if route.startswith(k))
    return reverse(name, kwargs={"pk": world[kind].pk})


def expected_practices(name, role):
    """A clinic administrator's referring practices: their own clinic's (Riverside is North's, not South's);
    403 for everyone else, referrers included."""
    if role not in ("carol", "dave"):
        return 403
    if name == "referrals:practices":
        return 200
    return 405 if role == "carol" else 404


def expected(name, route, role):
    if name in SSO_GET:
        return SSO_GET[name]
    if name in STAFF_GET and role in REFERRERS:
        return 404
    if name in STAFF_GET:
        allowed = {"root", "carol", "dave"} if name.startswith("clinic:") else {"root"}
        if role == "dave" and name == "clinic:removed_image":
            return 404  # North's removed image: South's administrator learns nothing of it
        return 302 if role == "anonymous" else STAFF_GET[name] if role in allowed else 403
    if name in PUBLIC:
        # LoginRequiredMiddleware sends anonymous visitors of logout to the login page too.
        return {"anonymous": 200 if name == "login" else 302}.get(role, OWNER_GET[name])
    if role == "anonymous":
        return 302
    if name.startswith("referrals:practice"):
        return expected_practices(name, role)
    has_object = "<int:pk>" in route
    if role in REFERRERS:
        if role == "erin" and has_object:
            return 404  # another practice's referral
        return REFERRER_GET.get(name, 404)
    if role == "root" and name in ("referrals:mine", "referrals:triage"):
        return 403  # neither a referring practice's nor a clinic's
    if role not in OWNERS and has_object:
        return 404
    if role == "root" and name in ("clinic:patient_create", "clinic:dicom_import"):
        return 403  # not in any clinic: nothing to create patients in
    return OWNER_GET[name]


def login(client, world, role):
    if role != "anonymous":
        client.force_login(world[role])


def test_every_url_is_in_the_matrix():
    assert {name for name, _ in project_urls()} == set(OWNER_GET) | set(STAFF_GET) | set(SSO_GET)


@pytest.mark.parametrize("role", ROLES)
def test_get_matrix(client, world, role):
    login(client, world, role)
    got = {}
    for name, route in project_urls():
        url = url_for(name, route, world)
        r = client.get(url)
        got[name] = r.status_code
        if r.status_code == 302 and role == "anonymous" and name not in SSO_GET:
            assert r.url.startswith(reverse("login") + "?next="), url
    assert got == {name: expected(name, route, role) for name, route in project_urls()}


@pytest.mark.parametrize("role", ["anonymous", "bob", "dave", "root", "erin"])
def test_outsiders_cannot_post_to_anything(client, world, role):
    login(client, world, role)
    before = [m.objects.count() for m in (Patient, Lesion, Case, Feedback, Answer)]
    for name, route in project_urls():
        if "<int:pk>" not in route or name in STAFF_GET or name.startswith("referrals:practice"):
            continue  # administrators' pages: 403 (the matrices above)
        url = url_for(name, route, world)
        data = {"agrees_with_ai": "yes", "clinical_diagnosis": "nevus", "management": "monitor",
                "site": "head/neck", "identifier": "X", "birth_year": 1980, "sex": "male", "action": "return",
                "message": "x"}
        r = client.post(url, data)
        assert r.status_code == (302 if role == "anonymous" else 404), (url, r.status_code)
    assert [m.objects.count() for m in (Patient, Lesion, Case, Feedback, Answer)] == before
    world["case"].refresh_from_db()
    assert world["case"].status == Case.Status.FAILED  # retry did not run


def test_owner_posts_are_accepted(client, world):
    client.force_login(world["alice"])
    case = world["case"]
    r = client.post(reverse("clinic:case_feedback", args=[case.pk]),
                    {"agrees_with_ai": "no", "clinical_diagnosis": "nevus", "management": "monitor"})
    assert r.status_code == 302 and case.feedback_history.count() == 1


def test_lists_show_only_own_clinic(client, world):
    south_patient = make_patient(world["bob"].clinic, "S-777")
    make_case(make_lesion(south_patient), world["bob"])
    client.force_login(world["alice"])
    for name in ("clinic:case_list", "clinic:patient_list"):
        body = client.get(reverse(name)).content.decode()
        assert "N-001" in body and "S-777" not in body
    assert "N-001" not in client.get(reverse("clinic:case_list") + "?q=S-777").content.decode()


def test_media_files_have_no_public_url(client, world):
    name = world["case"].image.name
    for role in ("anonymous", "alice", "root"):
        login(client, world, role)
        assert client.get(f"/media/{name}").status_code == 404
        assert client.get(f"/{name}").status_code in (302, 404)


# The Django admin, per role. Models a clinic administrator may see, scoped to their clinic; every
# other registered model (the shared model registry, the lockout records, groups) is the platform's.
CLINIC_SCOPED = {"accounts.clinic", "accounts.user", "clinic.patient", "clinic.lesion", "clinic.case",
                 "clinic.prediction", "audit.auditevent", "referrals.referral"}


def admin_pages(world):
    """(model label, url, row?, owning clinic or None) for the admin index, every changelist, and the
    change page of every row of every registered model."""
    yield None, reverse("admin:index"), False, None
    for model in admin.site._registry:
        label = f"{model._meta.app_label}.{model._meta.model_name}"
        yield label, reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"), False, None
        for obj in model.objects.all():
            yield label, reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.pk]), \
                True, clinic_id_of(obj) if label != "accounts.clinic" else obj.pk


def expected_admin(role, label, row, owner, world):
    if role == "root":
        return 200
    if role in ("alice", "bob"):
        return "login"  # clinicians are not staff: the admin sends them to its login
    if role in REFERRERS:
        return 404  # not a page of the referral service
    clinic = world["carol" if role == "carol" else "dave"].clinic_id
    if label is None:
        return 200  # the index, listing only what the role may see
    if label not in CLINIC_SCOPED:
        return 403
    if not row:
        return 200  # a changelist (scoped)
    # Another clinic's row, or one of no clinic (root's account), "does not exist" for them.
    return 200 if owner == clinic else 302


@pytest.mark.parametrize("role", ROLES)
def test_admin_matrix(client, world, role):
    login(client, world, role)
    pages = list(admin_pages(world))
    assert len(pages) > 20
    landed = {}
    for label, url, row, owner in pages:
        r = client.get(url)
        if role == "anonymous":
            assert r.status_code == 302 and r.url.startswith((reverse("login"), reverse("admin:login"))), url
            landing = r.url.split("?")[0]
            if landing not in landed:  # the login page it is sent to answers (it was a 500 for the admin's)
                landed[landing] = client.get(r.url, follow=True).status_code
                assert landed[landing] == 200, (url, r.url, landed[landing])
            continue
        want = expected_admin(role, label, row, owner, world)
        if want == "login":
            assert r.status_code == 302 and r.url.startswith(reverse("admin:login")), (url, r.status_code)
        else:
            assert r.status_code == want, (role, url, r.status_code)


def test_a_clinic_admin_sees_and_changes_only_their_clinic_in_the_admin(client, world):
    client.force_login(world["carol"])
    patients = client.get(reverse("admin:clinic_patient_changelist")).content.decode()
    assert "N-001" in patients and "S-001" not in patients and "South" not in patients  # no clinic filter either
    users = client.get(reverse("admin:accounts_user_changelist")).content.decode()
    assert ">alice<" in users and ">bob<" not in users and ">root<" not in users
    index = client.get(reverse("admin:index")).content.decode()
    assert "Model versions" not in index and "Patients" in index
    # Relabelling another clinic's case through the admin: refused, nothing changed.
    south = world["south_case"]
    r = client.post(reverse("admin:clinic_case_change", args=[south.pk]),
                    {"truth_label": "malignant", "truth_source": "consensus"})
    assert r.status_code == 302 and r.url == reverse("admin:index")
    south.refresh_from_db()
    assert south.truth_label == ""
    # A new account made by a clinic admin belongs to their clinic and is never a superuser.
    r = client.post(reverse("admin:accounts_user_add"), {
        "username": "newdoc", "password1": "a-long-unusual-pass-9", "password2": "a-long-unusual-pass-9",
        "usable_password": "true", "is_superuser": "on", "clinic": world["south"].pk})
    assert r.status_code == 302, r.content.decode()[:2000]
    new = User.objects.get(username="newdoc")
    assert new.clinic == world["north"] and not new.is_superuser and new.role == "clinician"
    # The audit trail: North's events only.
    events = client.get(reverse("admin:audit_auditevent_changelist")).content.decode()
    assert f"case {world['case'].pk}" in events.replace("</td><td", " ").lower() or "1 audit event" in events.lower()
    assert AuditEvent.objects.filter(clinic=world["south"]).exists()


def test_a_clinic_admin_cannot_touch_the_shared_model(client, world):
    client.force_login(world["carol"])
    version = world["version"]
    for name in ("manage:publish", "manage:cancel", "manage:shadow"):
        assert client.post(reverse(name, args=[version.pk]), {"reason": "x"}).status_code == 403
    assert client.post(reverse("manage:retrain"), {"epochs": 1}).status_code == 403
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.CANDIDATE


def test_missing_stored_image_is_a_404_not_a_500(client, world):
    case = world["case"]
    case.image.storage.delete(case.image.name)
    case.thumbnail.storage.delete(case.thumbnail.name)
    client.force_login(world["alice"])
    assert client.get(reverse("clinic:case_image", args=[case.pk])).status_code == 404
    assert client.get(reverse("clinic:case_image", args=[case.pk]) + "?size=thumb").status_code == 404


@pytest.mark.parametrize("role", ["anonymous", "alice", "bob"])
def test_only_staff_can_post_to_the_administrators_pages(client, world, role):
    login(client, world, role)
    case, version = world["case"], world["version"]
    data = {"case": case.pk, "cases": [case.pk], "label": "malignant", "source": "histopathology",
            "use_for_training": "1", "reason": "x", "n": 5, "epochs": 1}
    for name, route in project_urls():
        if name in STAFF_GET:
            r = client.post(url_for(name, route, world), data)
            assert r.status_code == (302 if role == "anonymous" else 403), (name, r.status_code)
            if role == "anonymous":
                assert r.url.startswith(reverse("login"))
    case.refresh_from_db()
    version.refresh_from_db()
    assert case.truth_label == "" and not case.use_for_training
    assert version.status == ModelVersion.Status.CANDIDATE and not version.cancel_requested
    assert ModelVersion.objects.count() == 1  # no training run started


def test_cases_follow_their_patient_to_another_clinic(client, world):
    """Cases carry a denormalised clinic (the history's index); it must never disagree with the
    patient's, or a clinic would keep seeing a patient it no longer has."""
    case, patient = world["case"], world["patient"]
    assert case.clinic_id == patient.clinic_id
    patient.clinic = world["bob"].clinic
    patient.save()
    case.refresh_from_db()
    assert case.clinic_id == world["bob"].clinic_id
    client.force_login(world["alice"])
    assert client.get(reverse("clinic:case_detail", args=[case.pk])).status_code == 404
    assert "N-001" not in client.get(reverse("clinic:case_list")).content.decode()
    client.force_login(world["bob"])
    assert client.get(reverse("clinic:case_detail", args=[case.pk])).status_code == 200
    # A lesion moved to another patient takes its cases along.
    lesion = world["lesion"]
    lesion.patient = make_patient(world["alice"].clinic, "N-002")
    lesion.save()
    case.refresh_from_db()
    assert case.clinic_id == world["alice"].clinic_id


@pytest.mark.parametrize("role", ["alice", "root"])
def test_no_view_redirects_off_the_site(client, world, role):
    """Every URL, GET and POST, with ``next`` pointing elsewhere: no redirect leaves this host."""
    login(client, world, role)
    case = world["case"]
    data = {"case": case.pk, "cases": [case.pk], "label": "malignant", "source": "histopathology",
            "use_for_training": "1", "agrees_with_ai": "no", "clinical_diagnosis": "nevus", "management": "monitor"}
    hostile = ["https://evil.example/phish", "//evil.example/phish", "https:evil.example", "\\\\evil.example"]
    redirects = 0
    for name, route in project_urls():
        if name == "logout":
            continue
        url = url_for(name, route, world)
        for target in hostile:
            for r in (client.get(url, {"next": target}), client.post(url, {**data, "next": target})):
                if r.status_code in (301, 302, 303, 307, 308):
                    redirects += 1
                    assert "evil.example" not in r.url and not r.url.startswith("//"), (name, r.url)
    assert redirects > 0


def north_state(world):
    """What a POST from outside could change of North's records and the shared model."""
    north = world["north"]
    cases = Case.objects.filter(clinic=north)
    return (Patient.objects.filter(clinic=north).count(), Lesion.objects.filter(patient__clinic=north).count(),
            cases.count(), Feedback.objects.filter(case__clinic=north).count(),
            sorted(cases.values_list("status", "truth_label", "use_for_training", "flagged")),
            sorted(ModelVersion.objects.values_list("version", "status")),
            sorted(Referral.objects.values_list("pk", "status")), Answer.objects.count())


def may_post(name, route, role) -> bool:
    if name in PUBLIC or name in SSO_GET:
        return True
    if role == "anonymous":
        return False
    if name.startswith("referrals:practice"):
        return role in ("carol", "dave") if name == "referrals:practices" else role == "carol"
    if name.startswith("referrals:"):
        if role in REFERRERS:  # their form; the images the clinic asked of their own referral (none here)
            return name == "referrals:create" or (role == "dana" and name == "referrals:more_images")
        if name == "referrals:create":
            return False
        return role in OWNERS if "<int:pk>" in route else role != "root"
    if role in REFERRERS:
        return name in ("account_security", "two_factor_verify", "two_factor_setup", "api_tokens",
                        "api_token_revoke", "api_docs")
    if name.startswith("manage:"):
        return role == "root"
    if name in STAFF_GET:  # the relabel queue: North's cases for North's administrator, any for root
        return role in ("carol", "root")
    if "<int:pk>" in route:
        return role in OWNERS
    return role != "root" or name not in ("clinic:patient_create", "clinic:dicom_import")


@pytest.mark.parametrize("role", ROLES)
def test_post_matrix(client, world, role):
    """Every URL, POSTed by every role (the test client skips CSRF: the rules themselves are tested).
    Where the role may not act, the answer is a refusal and North's records and the model are as
    they were; nowhere a 500."""
    login(client, world, role)
    data = {"agrees_with_ai": "yes", "clinical_diagnosis": "nevus", "management": "monitor", "site": "head/neck",
            "identifier": "X-1", "birth_year": 1980, "sex": "male", "case": world["case"].pk, "label": "malignant",
            "source": "consensus", "use_for_training": "1", "flagged": "1", "epochs": 1, "reason": "x", "n": 1}
    for name, route in project_urls():
        if name == "logout":
            continue
        url = url_for(name, route, world)
        before = north_state(world)
        r = client.post(url, data)
        assert r.status_code != 500, url
        if may_post(name, route, role):
            continue
        if role == "anonymous":
            assert r.status_code == 302 and r.url.startswith(reverse("login")), (url, r.status_code)
        else:
            assert r.status_code in (403, 404, 405), (role, url, r.status_code)
        assert north_state(world) == before, (role, url)
