"""Token authentication: django-rest-knox's, and the token's last use kept (at most once a minute)."""

import datetime

from django.utils import timezone
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication

TOUCH_EVERY = datetime.timedelta(minutes=1)


class TokenAuthentication(KnoxTokenAuthentication):
    """``Authorization: Token <token>``. An expired token is deleted when it is presented (knox)."""

    def validate_user(self, auth_token):
        user, token = super().validate_user(auth_token)
        from skinweb.accounts import twofactor

        if twofactor.required(user) and twofactor.authenticator(user) is None:
            # Made before the clinic (or the platform's rule) asked for a second factor this user has not
            # set up: refused until they have, as their pages are.
            raise exceptions.AuthenticationFailed("Two-factor login is required of your account and not set up: "
                                                  "set it up on the security page, then use your token again.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
            type(token).objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return user, token


class BrowserSessionAuthentication(SessionAuthentication):
    """The signed-in browser's session (the docs page's "Try it out"), CSRF-checked as DRF does."""
