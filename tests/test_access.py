"""Who can reach what. The URL list is read from the URLconf, so a new view cannot be missed.

Roles: anonymous; Alice, a dermatologist of the North clinic which owns the records; Bob, a
dermatologist of the South clinic; Root, a staff superuser attached to no clinic.
"""

import pytest
from django.contrib import admin
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from skinweb.clinic.models import Case, Feedback, Lesion, Patient
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_lesion, make_patient

pytestmark = pytest.mark.django_db

# Status of a GET by a user of the clinic that owns the record. Every named URL outside the
# admin must be listed: test_every_url_is_in_the_matrix fails otherwise.
OWNER_GET = {
    "clinic:dashboard": 200,
    "clinic:case_list": 200,
    "clinic:case_export": 200,
    "clinic:case_report": 200,
    "clinic:case_heatmap": 404,  # the failed case has no prediction, so no heat map
    "clinic:patient_list": 200,
    "clinic:patient_create": 200,
    "clinic:patient_detail": 200,
    "clinic:lesion_create": 200,
    "clinic:lesion_detail": 200,
    "clinic:lesion_upload": 200,
    "clinic:case_detail": 200,
    "clinic:case_status": 200,
    "clinic:case_feedback": 200,
    "clinic:case_retry": 405,  # POST only
    "clinic:case_image": 200,
    "clinic:case_flag": 405,  # POST only
    "login": 302,  # already logged in: sent on
    "logout": 405,  # POST only
}
PUBLIC = {"login", "logout"}
# The administrators' pages: 403 for clinicians, this for a staff user.
STAFF_GET = {
    "clinic:relabel_queue": 200,
    "clinic:relabel": 405,
    "clinic:training_switch": 405,
    "manage:model_list": 200,
    "manage:retrain": 405,
    "manage:model_detail": 200,
    "manage:publish": 405,
    "manage:cancel": 405,
    "manage:shadow": 405,
}


def project_urls(patterns=None, prefix="", namespace=""):
    """(name, route) of every named URL outside the admin site."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            if p.app_name == "admin":
                continue
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from project_urls(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern) and p.name:
            yield f"{namespace}{p.name}", prefix + str(p.pattern)


@pytest.fixture
def world(client, north, alice, bob, root):
    client.logout()  # each test logs in whom it needs
    patient = make_patient(north, "N-001")
    lesion = make_lesion(patient)
    case = make_case(lesion, alice, status=Case.Status.FAILED, failure_reason="test")
    version = ModelVersion.objects.create(version="v-access", filename="v.safetensors", arch="vgg16", input_size=64,
                                          threshold=0.5, status=ModelVersion.Status.CANDIDATE)
    return {"alice": alice, "bob": bob, "root": root, "patient": patient, "lesion": lesion, "case": case,
            "version": version}


def url_for(name, route, world):
    if "<int:pk>" not in route:
        return reverse(name)
    owner = {"patients/": "patient", "lesions/": "lesion", "cases/": "case", "manage/relabel/": "case",
             "manage/models/": "version"}
    kind = next(v for k, v in owner.items() if route.startswith(k))
    return reverse(name, kwargs={"pk": world[kind].pk})


def expected(name, route, role):
    if name in STAFF_GET:
        return {"anonymous": 302, "root": STAFF_GET[name]}.get(role, 403)
    if name in PUBLIC:
        # LoginRequiredMiddleware sends anonymous visitors of logout to the login page too.
        return {"anonymous": 200 if name == "login" else 302}.get(role, OWNER_GET[name])
    if role == "anonymous":
        return 302
    has_object = "<int:pk>" in route
    if role in ("bob", "root") and has_object:
        return 404
    if role == "root" and name == "clinic:patient_create":
        return 403  # not in any clinic: nothing to create patients in
    return OWNER_GET[name]


def login(client, world, role):
    if role != "anonymous":
        client.force_login(world[role])


def test_every_url_is_in_the_matrix():
    assert {name for name, _ in project_urls()} == set(OWNER_GET) | set(STAFF_GET)


@pytest.mark.parametrize("role", ["anonymous", "alice", "bob", "root"])
def test_get_matrix(client, world, role):
    login(client, world, role)
    got = {}
    for name, route in project_urls():
        url = url_for(name, route, world)
        r = client.get(url)
        got[name] = r.status_code
        if r.status_code == 302 and role == "anonymous":
            assert r.url.startswith(reverse("login") + "?next="), url
    assert got == {name: expected(name, route, role) for name, route in project_urls()}


@pytest.mark.parametrize("role", ["anonymous", "bob", "root"])
def test_outsiders_cannot_post_to_anything(client, world, role):
    login(client, world, role)
    before = [m.objects.count() for m in (Patient, Lesion, Case, Feedback)]
    for name, route in project_urls():
        if "<int:pk>" not in route or name in STAFF_GET:
            continue
        url = url_for(name, route, world)
        data = {"agrees_with_ai": "yes", "clinical_diagnosis": "nevus", "management": "monitor",
                "site": "head/neck", "identifier": "X", "birth_year": 1980, "sex": "male"}
        r = client.post(url, data)
        assert r.status_code == (302 if role == "anonymous" else 404), (url, r.status_code)
    assert [m.objects.count() for m in (Patient, Lesion, Case, Feedback)] == before
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


def admin_urls(world):
    """The admin index, and the list and change pages of every registered model that has a row."""
    yield reverse("admin:index")
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        yield reverse("admin:{}_{}_changelist".format(*info))
        obj = model.objects.first()
        if obj is not None:
            yield reverse("admin:{}_{}_change".format(*info), args=[obj.pk])


@pytest.mark.parametrize("role", ["anonymous", "alice", "bob", "root"])
def test_admin_is_for_staff_only(client, world, role):
    login(client, world, role)
    for url in admin_urls(world):
        r = client.get(url)
        if role == "root":
            assert r.status_code == 200, url
        else:
            # Anonymous visitors go to the site login first; clinicians to the admin's (not staff).
            logins = (reverse("login"), reverse("admin:login")) if role == "anonymous" else (reverse("admin:login"),)
            assert r.status_code == 302 and r.url.startswith(logins), (url, r.status_code)


def test_missing_stored_image_is_a_404_not_a_500(client, world):
    case = world["case"]
    case.image.storage.delete(case.image.name)
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
