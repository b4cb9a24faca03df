import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.middleware.locale import LocaleMiddleware
from django.shortcuts import resolve_url
from django.utils import translation

LOGIN_AT, SEEN_AT = "skinweb_login_at", "skinweb_seen_at"


@receiver(user_logged_in)
def remember_login_time(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        now = int(time.time())
        request.session[LOGIN_AT] = request.session[SEEN_AT] = now


class SessionTimeoutMiddleware:
    """Log a user out after SESSION_IDLE_MINUTES without a request of their own and SESSION_MAX_HOURS
    after login. htmx polling (a case's status panel) is not the user's activity and does not count."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = int(time.time())
            session = request.session
            login_at, seen_at = session.get(LOGIN_AT, now), session.get(SEEN_AT, now)
            if now - seen_at > settings.SESSION_IDLE_MINUTES * 60 or now - login_at > settings.SESSION_MAX_HOURS * 3600:
                logout(request)
                messages.info(request, "Your session ended; please log in again.")
                # Now anonymous: LoginRequiredMiddleware sends the request to the login page.
                response = self.get_response(request)
                if request.headers.get("HX-Request"):
                    response["HX-Redirect"] = resolve_url(settings.LOGIN_URL)  # the whole page, not the panel
                return response
            session.setdefault(LOGIN_AT, now)
            # A minute's resolution is enough, and spares a session write on most requests.
            if not request.headers.get("HX-Request") and now - seen_at >= 60:
                session[SEEN_AT] = now
        return self.get_response(request)


class UserLanguageMiddleware(LocaleMiddleware):
    """The language of a page: the user's own choice (their account page), else the browser's
    (Accept-Language), else the installation's LANGUAGE_CODE. It follows the authentication middleware
    because the choice is the user's; the site has no language prefixes in its URLs."""

    def process_request(self, request):
        user = getattr(request, "user", None)
        chosen = getattr(user, "language", "") if user is not None and user.is_authenticated else ""
        if chosen:
            translation.activate(chosen)
            request.LANGUAGE_CODE = translation.get_language()
        else:
            super().process_request(request)
