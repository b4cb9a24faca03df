"""Login throttling. django-axes counts failures per (username, address): five for one username from one
address pause that username there for the cool-off time. Failures from one address are also counted over all
usernames (password spraying stays under the per-username count), but a clinic's staff often share one
address (one NAT): past AXES_ADDRESS_FAILURE_LIMIT failures the address is slowed, not locked, to one attempt
every AXES_ADDRESS_INTERVAL_SECONDS, so a colleague with the right password still gets in after a short wait.
Attempts refused while paused are not counted (AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT off), and the
page says which of the two applies, for how long."""

import math

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Max, Sum
from django.shortcuts import render
from django.utils import timezone


def address_wait(request) -> int:
    """Seconds this request's address must still wait before its next attempt (0: it may try now)."""
    found = AccessAttempt.objects.filter(ip_address=request.axes_ip_address).aggregate(
        n=Sum("failures_since_start"), last=Max("attempt_time"))
    if (found["n"] or 0) < settings.AXES_ADDRESS_FAILURE_LIMIT or found["last"] is None:
        return 0
    waited = (timezone.now() - found["last"]).total_seconds()
    return max(0, math.ceil(settings.AXES_ADDRESS_INTERVAL_SECONDS - waited))


class SprayAwareHandler(AxesDatabaseHandler):
    """Refused when one (username, address) pair has reached ``AXES_FAILURE_LIMIT`` failures within the cool-off
    time, or the address is slowed (``address_wait``); expired attempts are deleted by the database handler
    before counting."""

    def get_failures(self, request, credentials=None) -> int:
        per_pair = super().get_failures(request, credentials)
        if per_pair < get_failure_limit(request, credentials) and address_wait(request) > 0:
            # axes compares one number with one limit: report the address as at that limit.
            return get_failure_limit(request, credentials)
        return per_pair


def lockout_response(request, original_response=None, credentials=None):
    """The page for a refused login: which pause applies (this username from this network, or this network's
    pace), for how long, and that other accounts are not locked."""
    credentials = credentials or {}
    username = get_client_username(request, credentials) or ""
    per_pair = AccessAttempt.objects.filter(ip_address=request.axes_ip_address, username=username).aggregate(
        n=Sum("failures_since_start"), last=Max("attempt_time"))
    limit = get_failure_limit(request, credentials)
    context = {"username": username}
    if (per_pair["n"] or 0) >= limit and per_pair["last"] is not None:
        cool_off = get_cool_off(request)
        left = (per_pair["last"] + cool_off - timezone.now()).total_seconds()
        context.update(kind="username", failures=per_pair["n"], minutes=max(1, math.ceil(left / 60)))
    else:
        context.update(kind="address", seconds=max(1, address_wait(request)),
                       limit=settings.AXES_ADDRESS_FAILURE_LIMIT,
                       window=int(get_cool_off(request).total_seconds() // 60))
    return render(request, "registration/locked_out.html", context, status=429)
