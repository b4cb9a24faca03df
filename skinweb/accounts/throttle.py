"""Login throttling across usernames: django-axes counts failures per (username, address); an
address that sprays one password over many usernames stays under that count, so failures from
one address are also counted over all usernames, against a higher limit."""

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum


class SprayAwareHandler(AxesDatabaseHandler):
    """Locked when one (username, address) pair reaches ``AXES_FAILURE_LIMIT`` failures, or one
    address reaches ``AXES_ADDRESS_FAILURE_LIMIT`` failures over all usernames (within the cool-off
    time; expired attempts are deleted by the database handler before counting)."""

    def get_failures(self, request, credentials=None) -> int:
        per_pair = super().get_failures(request, credentials)
        per_address = AccessAttempt.objects.filter(ip_address=request.axes_ip_address).aggregate(
            n=Sum("failures_since_start"))["n"] or 0
        if per_address >= settings.AXES_ADDRESS_FAILURE_LIMIT:
            # axes compares one number with one limit: report the address as at that limit.
            return max(per_pair, get_failure_limit(request, credentials))
        return per_pair
