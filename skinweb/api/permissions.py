"""Permissions every API route checks (settings.REST_FRAMEWORK)."""

from rest_framework.permissions import BasePermission


class NoReferrers(BasePermission):
    """A referring practice's users send referrals and read answers on the referral pages; the clinic's records
    and the API are not theirs."""

    message = "Your account belongs to a referring practice: use the referral pages."

    def has_permission(self, request, view):
        return not getattr(request.user, "is_referrer", False)
