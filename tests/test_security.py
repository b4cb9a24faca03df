"""Authentication, sessions and headers: login lockout, idle and absolute session limits, CSP."""

import time

import pytest
from django.test import Client
from django.urls import reverse

from skinweb.accounts import middleware
from tests.builders import PASSWORD, make_clinic, make_user

pytestmark = pytest.mark.django_db


def login(client, username, password):
    return client.post(reverse("login"), {"username": username, "password": password})


def test_repeated_failed_logins_lock_the_account_for_that_address(client, settings):
    make_user("alice", make_clinic())
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, "alice", "wrong").status_code == 200
    locked = login(client, "alice", "wrong")
    assert locked.status_code == 429 and b"Too many failed logins" in locked.content
    # Even the right password is refused while locked.
    assert login(client, "alice", PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session


def test_a_successful_login_resets_the_count(client, settings):
    make_user("alice", make_clinic())
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        login(client, "alice", "wrong")
    assert login(client, "alice", PASSWORD).status_code == 302
    client.post(reverse("logout"))
    assert login(client, "alice", "wrong").status_code == 200  # counting starts again


def age_session(client, key, seconds):
    session = client.session
    session[key] = int(time.time()) - seconds
    session.save()


def test_idle_session_ends(client, settings):
    make_user("alice", make_clinic())
    login(client, "alice", PASSWORD)
    assert client.get(reverse("clinic:case_list")).status_code == 200
    age_session(client, middleware.SEEN_AT, settings.SESSION_IDLE_MINUTES * 60 + 5)
    r = client.get(reverse("clinic:case_list"))
    assert r.status_code == 302 and r.url.startswith(reverse("login"))
    assert "_auth_user_id" not in client.session


def test_polling_does_not_keep_a_session_alive_and_htmx_is_sent_to_login(client, settings):
    make_user("alice", make_clinic())
    login(client, "alice", PASSWORD)
    age_session(client, middleware.SEEN_AT, settings.SESSION_IDLE_MINUTES * 60 - 30)
    client.get(reverse("clinic:case_list"), headers={"HX-Request": "true"})
    assert client.session[middleware.SEEN_AT] < time.time() - 60  # the poll did not count as activity
    age_session(client, middleware.SEEN_AT, settings.SESSION_IDLE_MINUTES * 60 + 5)
    r = client.get(reverse("clinic:case_list"), headers={"HX-Request": "true"})
    assert r["HX-Redirect"] == reverse("login")


def test_session_has_an_absolute_lifetime(client, settings):
    make_user("alice", make_clinic())
    login(client, "alice", PASSWORD)
    age_session(client, middleware.LOGIN_AT, settings.SESSION_MAX_HOURS * 3600 + 5)
    r = client.get(reverse("clinic:case_list"))
    assert r.status_code == 302 and r.url.startswith(reverse("login"))


def test_security_headers(client):
    r = client.get(reverse("login"))
    csp = r["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r["X-Frame-Options"] == "DENY" and r["X-Content-Type-Options"] == "nosniff"
    assert r["Referrer-Policy"] == "same-origin" and r["Cross-Origin-Opener-Policy"] == "same-origin"


def test_templates_have_no_inline_script_or_style():
    """The CSP refuses them, so they would silently break in the browser."""
    import re

    from tests.conftest import ROOT

    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert not re.search(r"\sstyle=\"", text) and "<style" not in text, path
        assert not re.search(r"\son[a-z]+=\"", text), path  # onclick= and friends


def test_audit_records_the_client_address_behind_a_proxy(client, settings):
    from django.test import RequestFactory

    from skinweb.accounts.ip import client_ip

    settings.PROXY_COUNT = 1
    request = RequestFactory().get("/", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9", REMOTE_ADDR="10.0.0.2")
    assert client_ip(request) == "203.0.113.9"  # the left-most entry is the client's claim, not trusted
    settings.PROXY_COUNT = 0
    assert client_ip(request) == "10.0.0.2"


def test_one_address_spraying_many_usernames_is_slowed_not_locked(client, settings):
    """One password tried against many usernames from one address: no username reaches its own limit, but past
    AXES_ADDRESS_FAILURE_LIMIT the address may try only once every AXES_ADDRESS_INTERVAL_SECONDS. A colleague
    behind the same address with the right password gets in once that short wait is over (issue 43: one NAT
    must not lock a whole clinic out for 15 minutes), and refused attempts are not counted."""
    from axes.models import AccessAttempt
    from django.db.models import Sum
    from django.utils import timezone

    clinic = make_clinic()
    names = [f"user{i}" for i in range(settings.AXES_ADDRESS_FAILURE_LIMIT // 2 + 1)]
    for name in names:
        make_user(name, clinic)
    tries = [name for name in names for _ in range(2)][: settings.AXES_ADDRESS_FAILURE_LIMIT]
    assert max(tries.count(n) for n in names) < settings.AXES_FAILURE_LIMIT
    for name in tries[:-1]:
        assert login(client, name, "Winter2026!").status_code == 200
    assert login(client, tries[-1], "Winter2026!").status_code == 429  # the failure that reaches the limit
    make_user("victor", clinic)
    slowed = login(client, "victor", PASSWORD)
    text = " ".join(slowed.content.decode().split())
    assert slowed.status_code == 429 and 'data-kind="address"' in text and "No account is locked" in text
    assert "wait" in text and "This account is locked" not in text
    counted = AccessAttempt.objects.aggregate(n=Sum("failures_since_start"))["n"]
    assert login(client, "victor", "wrong").status_code == 429
    assert AccessAttempt.objects.aggregate(n=Sum("failures_since_start"))["n"] == counted  # refused: not counted
    # The wait is seconds, not the cool-off: once it is over, the right password gets in.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timezone.timedelta(
        seconds=settings.AXES_ADDRESS_INTERVAL_SECONDS + 1))
    assert login(client, "victor", PASSWORD).status_code == 302
    # Another address is not affected at all.
    other = Client(REMOTE_ADDR="203.0.113.9")
    assert other.post(reverse("login"), {"username": "user0", "password": PASSWORD}).status_code == 302


def test_a_paused_username_is_named_and_others_still_log_in(client, settings):
    clinic = make_clinic()
    make_user("alice", clinic)
    make_user("bob", clinic)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(client, "alice", "wrong")
    paused = login(client, "alice", PASSWORD)
    text = " ".join(paused.content.decode().split())
    assert paused.status_code == 429 and 'data-kind="username"' in text and "alice" in text
    assert "Other people can still log in" in text
    assert login(client, "bob", PASSWORD).status_code == 302
