"""Who can reach what through the API: every API route (read from the URLconf, so a new one cannot be
missed) × every role × both clinics, as tests/test_access.py does for the pages. Each role calls with
a token of its own."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.throttling import SimpleRateThrottle

from skinweb.api.models import ApiToken
from skinweb.clinic.models import Case, Feedback, Lesion, Patient
from skinweb.referrals.models import Answer, Referral
from tests.builders import make_case, make_lesion, make_patient, make_referral_cast, make_user, upload

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "alice", "bob", "carol", "dave", "root", "dana", "erin"]
REFERRERS = {"dana", "erin"}  # dana's practice sent North the world's referral; erin's refers to South
OWNERS = {"alice", "carol"}  # North, which owns the world's records

# A GET by North's clinician (alice) of North's records. Every API route must be listed.
OWNER_GET = {
    "api:schema": 200,
    "api:patient-list": 200,
    "api:patient-detail": 200,
    "api:lesion-list": 200,
    "api:lesion-detail": 200,
    "api:lesion-visits": 200,
    "api:lesion-images": 405,  # POST only
    "api:lesion-visit-fhir": 400,  # which visit: ?date= is required
    "api:case-list": 200,
    "api:case-detail": 200,
    "api:case-feedback": 200,
    "api:case-truth": 403,  # administrators only (a clinic administrator's GET: 405)
    "api:case-report": 200,
    "api:case-image": 200,
    "api:case-heatmap": 404,  # the world's case has no heat map (tests/test_withheld.py opens one, owner and outsider)
    "api:case-fhir": 200,
    "api:dicom-list": 405,  # POST only (an import)
    "api:case-dicom": 200,
    "api:token-list": 200,
    "api:token-detail": 405,  # DELETE only
    "api:referral-list": 200,
    "api:referral-detail": 200,
    "api:referral-answer": 405,  # POST only
    "api:referral-images": 405,  # POST only
    "api:referral-fhir": 200,
}


def api_urls(patterns=None, prefix="", namespace=""):
    """(name, route) of every named URL of the API."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from api_urls(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern) and p.name and namespace.startswith("api:"):
            yield f"{namespace}{p.name}", prefix + str(p.pattern)


@pytest.fixture
def world(client, north, south, alice, bob, carol, root, monkeypatch):
    client.logout()
    # Hundreds of calls a minute here: the matrix tests access, not the throttle (tests/test_api.py does).
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "10000/min", "anon": "10000/min"})
    dave = make_user("dave", south, staff=True)
    patient = make_patient(north, "N-001")
    lesion = make_lesion(patient)
    case = make_case(lesion, alice, status=Case.Status.FAILED, failure_reason="test")
    make_case(make_lesion(make_patient(south, "S-001")), bob)
    cast = make_referral_cast(north, south)
    referral = cast["referral"]
    users = {"alice": alice, "bob": bob, "carol": carol, "dave": dave, "root": root, "dana": cast["dana"],
             "erin": cast["erin"]}
    tokens = {name: ApiToken.objects.create(user, name=f"{name}'s")[1] for name, user in users.items()}
    alices = ApiToken.objects.get(user=alice)
    return {**users, "tokens": tokens, "patient": patient, "lesion": lesion, "case": case, "alices": alices,
            "referral": referral}


def url_for(name, world):
    if name == "api:schema":
        return reverse(name)
    if name == "api:token-detail":
        return reverse(name, args=[world["alices"].token_key])
    if name.endswith("-list"):
        return reverse(name)
    kind = re.match(r"api:(\w+)-", name).group(1)
    return reverse(name, args=[world[kind].pk])


def call(client, world, role, method, url, **kwargs):
    if role != "anonymous":
        kwargs["HTTP_AUTHORIZATION"] = f"Token {world['tokens'][role]}"
    return getattr(client, method)(url, **kwargs)


def expected_get(name, role):
    if role == "anonymous":
        return 401
    if role in REFERRERS:  # the referral routes only (skinweb.api.permissions.NoReferrers), and the schema
        if name == "api:schema":
            return 200
        if not name.startswith("api:referral-"):
            return 403
        if name in ("api:referral-list", "api:referral-answer", "api:referral-images"):
            return OWNER_GET[name]
        return 200 if role == "dana" else 404
    if name == "api:case-truth":
        return 405 if role in ("carol", "dave", "root") else 403  # the method is refused before the record
    if name in ("api:lesion-images", "api:token-detail", "api:referral-answer", "api:referral-images"):
        return 405  # refused before the record is looked up: nothing learnt
    if "-list" in name or name == "api:schema" or role in OWNERS:
        return OWNER_GET[name]
    return 404  # another clinic's record, or none for the platform administrator: it does not exist


def test_every_api_route_is_in_the_matrix():
    assert {name for name, _ in api_urls()} == set(OWNER_GET)


@pytest.mark.parametrize("role", ROLES)
def test_api_get_matrix(client, world, role):
    got, lists = {}, {}
    for name, _ in api_urls():
        r = call(client, world, role, "get", url_for(name, world))
        got[name] = r.status_code
        if name.endswith("-list") and r.status_code == 200:
            lists[name] = r.content.decode()
    assert got == {name: expected_get(name, role) for name, _ in api_urls()}
    if role in REFERRERS:
        assert ('"id":' in lists["api:referral-list"]) == (role == "dana")
    elif role != "anonymous":  # North's records in the lists of North's members only; tokens: theirs
        assert ('"id":' in lists["api:referral-list"]) == (role in OWNERS)
        for name in ("api:patient-list", "api:case-list"):
            assert ("N-001" in lists[name]) == (role in OWNERS), (role, name)
        assert ("alice's" in lists["api:token-list"]) == (role in ("alice", "carol", "root"))


def north_state(world):
    north = world["alice"].clinic
    cases = Case.objects.filter(clinic=north)
    return (Patient.objects.filter(clinic=north).count(), Lesion.objects.filter(patient__clinic=north).count(),
            sorted(Lesion.objects.filter(patient__clinic=north).values_list("site", "label")),
            cases.count(), Feedback.objects.filter(case__clinic=north).count(),
            sorted(cases.values_list("status", "truth_label", "use_for_training")),
            ApiToken.objects.filter(user=world["alice"]).count(),
            sorted(Referral.objects.values_list("pk", "status")), Answer.objects.count())


def may_write(name, role):
    if name == "api:token-detail":  # alice's token: revoked by her, her clinic's administrator, the platform's
        return role in ("alice", "carol", "root")
    if role in OWNERS:
        return name != "api:case-truth" or role == "carol"
    return name in ("api:patient-list",) and role in ("bob", "dave")  # into their own clinic


@pytest.mark.parametrize("role", ROLES)
def test_api_write_matrix(client, world, role):
    """Every route, written by every role with each write method: where the role may not act the answer
    is a refusal and North's records are as they were; nowhere a 500."""
    body = {"identifier": "X-1", "birth_year": 1980, "sex": "male", "patient": world["patient"].pk,
            "site": "head/neck", "label": "changed", "agrees_with_ai": True, "clinical_diagnosis": "nevus",
            "management": "monitor", "source": "consensus", "use_for_training": True}
    for name, _ in api_urls():
        url = url_for(name, world)
        for method in ("post", "patch", "put", "delete"):
            before = north_state(world)
            if name == "api:lesion-images" and method == "post":
                r = call(client, world, role, method, url, data={"images": [upload()]})
            else:
                data = {**body, "label": "malignant"} if name == "api:case-truth" else body
                r = call(client, world, role, method, url, data=data, content_type="application/json")
            assert r.status_code < 500, (role, method, url, r.status_code)
            if r.status_code < 300:
                assert may_write(name, role), (role, method, url, r.status_code)
                continue
            assert r.status_code in (400, 401, 403, 404, 405, 415), (role, method, url, r.status_code)
            if role == "anonymous":
                assert r.status_code == 401
            assert north_state(world) == before, (role, method, url)
