"""Two-factor login: a TOTP authenticator app, with single-use recovery codes (django-otp).

Who needs it: everyone of a clinic whose administrator requires it (``Clinic.require_two_factor``), the
platform administrator whenever DEBUG is off (``PLATFORM_ADMIN_TWO_FACTOR``), and anyone who turned it
on for themselves. After the password, every page answers with the second-factor step until it is
passed: set-up for one who has no authenticator yet, the code otherwise. A wrong code counts as a failed
login with django-axes (the same lockout as passwords), on top of django-otp's own growing delay.
API tokens are made on a page, so only after this step."""

import base64
import secrets
import textwrap

import segno
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.signals import user_login_failed
from django.db import transaction
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django_otp import login as otp_login
from django_otp import match_token
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from skinweb.accounts.throttle import lockout_response
from skinweb.audit.models import record
from skinweb.redirects import redirect_to_next

# Reached while the second factor is pending (besides these, logging out and static files).
OPEN = ("two_factor_verify", "two_factor_setup", "logout", "login")


def required(user) -> bool:
    """Must ``user`` log in with a second factor?"""
    if user.is_platform_admin and settings.PLATFORM_ADMIN_TWO_FACTOR:
        return True
    clinic = getattr(user, "clinic", None)
    return bool(clinic and clinic.require_two_factor)


def authenticator(user) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


def pending(request) -> bool:
    """Signed in with the password, but the second factor this user needs is not given yet."""
    user = request.user
    if not user.is_authenticated or user.is_verified():
        return False
    return required(user) or authenticator(user) is not None


class SecondFactorMiddleware:
    """Every page but the second-factor step, logging out and static files waits for the second factor."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.open = None

    def __call__(self, request):
        if pending(request):
            if self.open is None:
                self.open = {reverse(name) for name in OPEN}
            if request.path not in self.open and not request.path.startswith(settings.STATIC_URL):
                step = "two_factor_verify" if authenticator(request.user) else "two_factor_setup"
                return redirect(f"{reverse(step)}?next={request.get_full_path()}")
        return self.get_response(request)


def new_recovery_codes(user) -> list[str]:
    """Replace the user's recovery codes with RECOVERY_CODES new ones (each works once)."""
    device, _ = StaticDevice.objects.get_or_create(user=user, name="recovery", defaults={"confirmed": True})
    device.token_set.all().delete()
    # 48 random bits each, as xxxx-xxxx-xxxx (django-otp keeps at most 16 characters).
    codes = ["-".join(textwrap.wrap(secrets.token_hex(6), 4)) for _ in range(settings.RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=c) for c in codes])
    return codes


def _locked(request, credentials) -> bool:
    return not AxesProxyHandler.is_allowed(request, credentials)


@never_cache
@require_http_methods(["GET", "POST"])
def verify(request):
    """The code from the authenticator app, or a recovery code."""
    user = request.user
    if authenticator(user) is None:
        return redirect("two_factor_setup" if required(user) else "account_security")
    if user.is_verified():
        return redirect_to_next(request, "clinic:dashboard")
    credentials = {"username": user.get_username()}
    error = None
    if request.method == "POST":
        if _locked(request, credentials):
            logout(request)
            return lockout_response(request, None, credentials)
        code = request.POST.get("code", "").strip().replace(" ", "")
        device = match_token(user, code) if code else None
        if device is not None:
            otp_login(request, device)
            record(request, "login_second_factor", user, method="recovery code" if isinstance(
                device, StaticDevice) else "authenticator")
            if isinstance(device, StaticDevice):
                left = device.token_set.count()
                messages.warning(request, _("You used a recovery code: %(left)d left. Make new ones on your account "
                                            "page if you have lost your authenticator.") % {"left": left})
            return redirect_to_next(request, "clinic:dashboard")
        user_login_failed.send(sender=__name__, credentials=credentials, request=request)  # counted by axes
        record(request, "login_second_factor_failed", user)
        if _locked(request, credentials):
            logout(request)
            return lockout_response(request, None, credentials)
        error = _("That code is not right (or was used already). Try the current one.")
    return render(request, "registration/two_factor_verify.html", {"error": error}, status=400 if error else 200)


@never_cache
@require_http_methods(["GET", "POST"])
def setup(request):
    """Add an authenticator app: scan the code, confirm with one of its codes; recovery codes shown once."""
    user = request.user
    if authenticator(user) is not None and not user.is_verified():
        return redirect("two_factor_verify")
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first() or TOTPDevice.objects.create(
        user=user, name="authenticator", confirmed=False)
    error = None
    if request.method == "POST":
        code = request.POST.get("code", "").strip().replace(" ", "")
        if code.isdigit() and device.verify_token(code):
            with transaction.atomic():
                TOTPDevice.objects.filter(user=user, confirmed=True).delete()  # a replaced phone
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                codes = new_recovery_codes(user)
            otp_login(request, device)
            record(request, "enable_two_factor", user)
            return render(request, "registration/recovery_codes.html", {"codes": codes})
        error = _("That code is not right: check the phone's clock, and type the code it shows now.")
    qr = segno.make(device.config_url, error="m").svg_inline(scale=4, dark="#000", light="#fff", title="QR code")
    return render(request, "registration/two_factor_setup.html",
                  {"qr": qr, "secret": _base32(device), "error": error, "required": required(user)},
                  status=400 if error else 200)


def _base32(device) -> str:
    key = base64.b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(key[i:i + 4] for i in range(0, len(key), 4))


@never_cache
@require_http_methods(["GET", "POST"])
def security(request):
    """The user's second factor: on or off, recovery codes left, new codes; a clinic administrator
    also requires it (or not) for their clinic."""
    user = request.user
    device = authenticator(user)
    codes = None
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "codes" and device:
            codes = new_recovery_codes(user)
            record(request, "new_recovery_codes", user)
        elif action == "disable" and device and not required(user):
            TOTPDevice.objects.filter(user=user).delete()
            StaticDevice.objects.filter(user=user).delete()
            record(request, "disable_two_factor", user)
            messages.success(request, _("Two-factor login is off for your account."))
            return redirect("account_security")
        elif action == "language" and request.POST.get("language", "") in {"", *dict(settings.LANGUAGES)}:
            old, user.language = user.language, request.POST.get("language", "")
            if old != user.language:
                user.save(update_fields=["language"])
                record(request, "set_language", user, old=old, new=user.language)
            with translation.override(user.language or translation.get_language_from_request(request)):
                messages.success(request, _("Your language is saved."))
            return redirect("account_security")
        elif action in ("require", "allow") and user.is_clinic_admin:
            clinic, value = user.clinic, action == "require"
            if clinic.require_two_factor != value:
                old = clinic.require_two_factor
                type(clinic).objects.filter(pk=clinic.pk).update(require_two_factor=value)
                record(request, "require_two_factor", clinic, old=old, new=value)
                messages.success(request, (_("Two-factor login is required in %(clinic)s.") if value
                                           else _("Two-factor login is optional in %(clinic)s.")) % {"clinic": clinic})
            return redirect("account_security")
        else:
            messages.error(request, _("Nothing was changed."))
            return redirect("account_security")
    left = StaticToken.objects.filter(device__user=user).count()
    return render(request, "registration/security.html",
                  {"device": device, "left": left, "codes": codes, "required": required(user),
                   "languages": settings.LANGUAGES})

