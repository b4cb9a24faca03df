"""Single sign-on against a real OpenID Connect provider in its own process (django-oauth-toolkit,
tests/oidc_provider/): the browser's part is played by an HTTP session, skinweb's part by Django's test
client, and skinweb itself talks to the provider over HTTP (token, user information, keys)."""

import re
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.urls import reverse

from skinweb.accounts.models import ExternalIdentity
from skinweb.audit.models import AuditEvent
from tests.builders import PASSWORD, make_user
from tests.oidc_provider import start_provider

pytestmark = pytest.mark.django_db
CALLBACK = "http://testserver/accounts/sso/callback/"


@pytest.fixture(scope="module")
def provider_url(tmp_path_factory):
    process, base = start_provider(tmp_path_factory.mktemp("provider"), CALLBACK)
    yield base
    process.kill()


@pytest.fixture
def hospital(settings, provider_url, north):
    settings.OIDC_PROVIDERS = [{"name": "hospital", "label": "St Elsewhere", "issuer": f"{provider_url}/o",
                                "client_id": "skinweb", "client_secret": "skinweb-secret"}]
    return provider_url


def through_provider(client, username):
    """Click "Log in with St Elsewhere", sign in on the provider's page, come back: the answer of the callback."""
    r = client.get(reverse("login"))
    assert "Log in with St Elsewhere" in r.content.decode()
    start = client.get(reverse("sso_login", args=["hospital"]))
    assert start.status_code == 302 and "code_challenge=" in start.url  # PKCE
    browser = requests.Session()
    page = browser.get(start.url, timeout=15)  # not signed in at the provider: its login page
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    nxt = re.search(r'name="next" value="([^"]*)"', page.text).group(1).replace("&amp;", "&")
    answer = browser.post(page.url, data={"username": username, "password": f"{username}-pass", "next": nxt,
                                          "csrfmiddlewaretoken": csrf}, headers={"Referer": page.url},
                          allow_redirects=False, timeout=15)
    location = answer.headers["Location"]
    while not location.startswith("http://testserver/"):
        answer = browser.get(urljoin(page.url, location), allow_redirects=False, timeout=15)
        location = answer.headers["Location"]
    back = urlsplit(location)
    return client.get(f"{back.path}?{back.query}")


def test_a_clinician_of_a_known_clinic_gets_an_account_and_keeps_it(client, hospital, north):
    client.logout()
    r = through_provider(client, "nurse")
    assert r.status_code == 302 and r.url == "/"
    user = get_user_model().objects.get(username="nurse@hospital")
    assert (user.clinic, user.role, user.has_usable_password()) == (north, "clinician", False)
    assert client.get(reverse("clinic:dashboard")).status_code == 200
    identity = ExternalIdentity.objects.get(user=user)
    assert identity.issuer == f"{hospital}/o" and identity.subject
    assert AuditEvent.objects.filter(action="login_sso", object_id=str(user.pk)).exists()
    client.logout()
    through_provider(client, "nurse")  # the same account again, not a second one
    assert get_user_model().objects.filter(username__startswith="nurse").count() == 1


def test_the_role_claim_makes_a_clinic_administrator_never_a_platform_administrator(client, hospital):
    client.logout()
    through_provider(client, "chief")
    chief = get_user_model().objects.get(username="chief@hospital")
    assert chief.role == "clinic_admin" and not chief.is_superuser
    client.logout()
    r = through_provider(client, "boss")  # claims "platform_admin": not a role here
    assert r.status_code == 302 and r.url == reverse("sso_refused")
    page = client.get(r.url).content.decode()
    assert "no role in skinweb" in page and "Ask your administrator" in page
    assert not get_user_model().objects.filter(username__startswith="boss").exists()
    assert not get_user_model().objects.filter(is_superuser=True).exists()


@pytest.mark.parametrize("username, says", [("stranger", "names no clinic of this skinweb (Nowhere)"),
                                            ("norole", "no role in skinweb")])
def test_an_unknown_clinic_or_no_role_asks_for_the_administrator_and_makes_no_account(client, hospital, username,
                                                                                      says):
    client.logout()
    r = through_provider(client, username)
    page = client.get(r.url)
    assert page.status_code == 403 and says in page.content.decode()
    assert "Ask your administrator" in page.content.decode()
    assert get_user_model().objects.count() == 0 and not ExternalIdentity.objects.exists()
    assert client.get(reverse("clinic:dashboard")).status_code == 302  # not logged in
    assert AuditEvent.objects.filter(action="login_sso_refused", object_id="hospital").count() == 1


def test_a_platform_administrator_account_cannot_be_reached_through_the_provider(client, hospital):
    client.logout()
    through_provider(client, "nurse")
    get_user_model().objects.filter(username="nurse@hospital").update(is_superuser=True, is_staff=True)
    client.logout()
    r = through_provider(client, "nurse")
    assert r.url == reverse("sso_refused") and "password and a second factor" in client.get(r.url).content.decode()


def test_a_clinic_that_requires_two_factor_asks_for_it_after_the_provider(client, hospital, north):
    north.require_two_factor = True
    north.save()
    client.logout()
    through_provider(client, "nurse")
    r = client.get(reverse("clinic:dashboard"))
    assert r.status_code == 302 and r.url.startswith(reverse("two_factor_setup"))


def test_password_login_can_be_switched_off_but_for_the_platform_administrator(client, hospital, north, root,
                                                                              settings):
    settings.LOCAL_LOGIN = False
    make_user("local", north)
    client.logout()
    page = client.get(reverse("login")).content.decode()
    assert "Log in with St Elsewhere" in page and "Platform administrator" in page
    r = client.post(reverse("login"), {"username": "local", "password": PASSWORD})
    assert r.status_code == 200 and "Password login is off here" in r.content.decode()
    r = client.post(reverse("login"), {"username": "root", "password": PASSWORD})
    assert r.status_code == 302


def test_a_forged_callback_is_refused(client, hospital):
    client.logout()
    client.get(reverse("sso_login", args=["hospital"]))
    r = client.get(reverse("sso_callback") + "?code=stolen&state=not-ours")
    assert r.status_code == 400
    assert client.get(reverse("clinic:dashboard")).status_code == 302
    assert client.get(reverse("sso_login", args=["elsewhere"])).status_code == 404
