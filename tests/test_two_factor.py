"""Two-factor login: set up with an authenticator app (a real TOTP), recovery codes that work once, a
clinic administrator requiring it, the platform administrator needing it outside DEBUG, and wrong codes
locked out by django-axes like wrong passwords."""

import re
import time

import pytest
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from skinweb.api.models import ApiToken
from skinweb.audit.models import AuditEvent
from tests.builders import PASSWORD

pytestmark = pytest.mark.django_db


def code(device, steps_ahead=0) -> str:
    """What the authenticator app shows now (or ``steps_ahead`` 30-second steps later)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():0{device.digits}d}"


def log_in(client, user):
    client.logout()
    r = client.post(reverse("login"), {"username": user.username, "password": PASSWORD})
    assert r.status_code == 302, r.content.decode()[-500:]
    return r


def set_up(client, user) -> list[str]:
    """Through the set-up page as a user does: the key from the page, a code, the recovery codes."""
    page = client.get(reverse("two_factor_setup")).content.decode()
    assert "<svg" in page  # the QR code, drawn on the page
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    assert re.search(r'data-testid="secret">([A-Z2-7 ]+)<', page)
    r = client.post(reverse("two_factor_setup"), {"code": code(device)})
    assert r.status_code == 200, r.content.decode()[-800:]
    return r.context["codes"]


def test_a_clinic_that_requires_it_sends_everyone_to_set_it_up_then_asks_for_it(client, alice, carol):
    client.force_login(carol)
    r = client.post(reverse("account_security"), {"action": "require"})
    assert r.status_code == 302 and alice.clinic.__class__.objects.get(pk=alice.clinic_id).require_two_factor
    assert AuditEvent.objects.filter(action="require_two_factor", detail__new=True).exists()
    log_in(client, alice)
    for url in (reverse("clinic:dashboard"), reverse("clinic:patient_list"), reverse("api_tokens"),
                reverse("api:case-list")):  # the API through the browser's session too
        r = client.get(url)
        assert r.status_code == 302 and r.url.startswith(reverse("two_factor_setup")), url
    codes = set_up(client, alice)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert client.get(reverse("clinic:dashboard")).status_code == 200
    # Next login: the code is asked for; a wrong one is refused, the app's next code lets in.
    log_in(client, alice)
    r = client.get(reverse("clinic:case_list"))
    assert r.url == f"{reverse('two_factor_verify')}?next={reverse('clinic:case_list')}"
    assert client.post(reverse("two_factor_verify"), {"code": "000000"}).status_code == 400
    device = TOTPDevice.objects.get(user=alice, confirmed=True)
    # django-otp's own delay after a wrong code (1 s, doubling with each): even the right code waits it out.
    assert client.post(reverse("two_factor_verify"), {"code": code(device, 1)}).status_code == 400
    time.sleep(1.1)
    r = client.post(reverse("two_factor_verify") + "?next=/cases/", {"code": code(device, 1), "next": "/cases/"})
    assert r.status_code == 302 and r.url == "/cases/"
    assert client.get(reverse("clinic:case_list")).status_code == 200
    # The requirement cannot be dodged by turning it off.
    client.post(reverse("account_security"), {"action": "disable"})
    assert TOTPDevice.objects.filter(user=alice).exists()


def test_a_recovery_code_works_once(client, alice):
    client.force_login(alice)
    codes = set_up(client, alice)
    for attempt in range(2):
        log_in(client, alice)
        r = client.post(reverse("two_factor_verify"), {"code": codes[0]})
        assert r.status_code == (302 if attempt == 0 else 400)
    time.sleep(1.1)  # django-otp's delay after the refused (used) code
    r = client.post(reverse("two_factor_verify"), {"code": codes[1]})
    assert r.status_code == 302
    page = client.get(reverse("account_security")).content.decode()
    assert "8 recovery codes left" in page
    new = client.post(reverse("account_security"), {"action": "codes"}).context["codes"]
    log_in(client, alice)
    assert client.post(reverse("two_factor_verify"), {"code": codes[2]}).status_code == 400  # replaced
    time.sleep(1.1)
    assert client.post(reverse("two_factor_verify"), {"code": new[0]}).status_code == 302


def test_wrong_codes_lock_the_account_out_like_wrong_passwords(client, alice, settings):
    client.force_login(alice)
    set_up(client, alice)
    log_in(client, alice)
    answers = [client.post(reverse("two_factor_verify"), {"code": f"{n:06d}"}).status_code
               for n in range(settings.AXES_FAILURE_LIMIT)]
    assert answers[:-1] == [400] * (settings.AXES_FAILURE_LIMIT - 1) and answers[-1] == 429
    assert client.get(reverse("clinic:dashboard")).status_code == 302  # logged out
    r = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert r.status_code == 429  # the password alone does not get back in either
    assert AuditEvent.objects.filter(action="login_second_factor_failed").count() == settings.AXES_FAILURE_LIMIT


def test_the_platform_administrator_needs_it_outside_debug(client, root, settings):
    settings.PLATFORM_ADMIN_TWO_FACTOR = True  # what DEBUG off gives (settings.py)
    log_in(client, root)
    for url in (reverse("manage:model_list"), reverse("admin:index"), reverse("clinic:relabel_queue")):
        r = client.get(url)
        assert r.status_code == 302 and r.url.startswith(reverse("two_factor_setup")), url
    set_up(client, root)
    assert client.get(reverse("manage:model_list")).status_code == 200
    settings.PLATFORM_ADMIN_TWO_FACTOR = False
    TOTPDevice.objects.all().delete()
    log_in(client, root)
    assert client.get(reverse("manage:model_list")).status_code == 200


def test_optional_for_a_clinician_who_may_turn_it_on_and_off(client, alice):
    client.force_login(alice)
    assert "Off." in client.get(reverse("account_security")).content.decode()
    set_up(client, alice)
    assert "On:" in client.get(reverse("account_security")).content.decode()
    client.post(reverse("account_security"), {"action": "disable"})
    assert not TOTPDevice.objects.filter(user=alice).exists()
    log_in(client, alice)
    assert client.get(reverse("clinic:dashboard")).status_code == 200
    # A clinician cannot require it for the clinic.
    client.post(reverse("account_security"), {"action": "require"})
    alice.clinic.refresh_from_db()
    assert not alice.clinic.require_two_factor


def test_tokens_are_made_only_after_the_second_factor(client, alice):
    alice.clinic.require_two_factor = True
    alice.clinic.save()
    log_in(client, alice)
    r = client.post(reverse("api_tokens"), {"name": "bridge", "days": 30})
    assert r.status_code == 302 and not ApiToken.objects.exists()


def test_a_token_made_before_the_clinic_required_it_waits_for_the_second_factor(client, alice, carol):
    token = ApiToken.objects.create(alice, name="bridge")[1]
    client.logout()
    url = reverse("api:patient-list")
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    alice.clinic.require_two_factor = True
    alice.clinic.save()
    r = client.get(url, HTTP_AUTHORIZATION=f"Token {token}")
    assert r.status_code == 401 and "Two-factor login is required" in r.json()["detail"]
    client.force_login(alice)
    set_up(client, alice)
    client.logout()
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
