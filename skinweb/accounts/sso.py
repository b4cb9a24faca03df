"""Single sign-on over OpenID Connect (mozilla-django-oidc), with one or more providers (OIDC_PROVIDERS).

Why mozilla-django-oidc rather than django-allauth: it is an authentication backend and two views, so
the rest stays as it is (Django's login page with django-axes, django-otp's second factor after any
login, the audit trail); allauth would bring its own account pages and its own two-factor apps to
reconcile with these. It knows one provider; several are served by binding its settings to the
provider being used (``Provider.setting``), chosen on the login page and kept in the session.

The rule from claims to accounts (docs/security.md, "Single sign-on"):
- the account is the provider's subject (``iss`` + ``sub``, ``ExternalIdentity``), created at the first
  login with a username from ``preferred_username`` (else the e-mail's local part) and the provider's name;
- its clinic: the claim ``clinic_claim`` (default ``skinweb_clinic``) names a clinic of this installation
  exactly; its role: the claim ``role_claim`` (default ``skinweb_role``, a string or a list) holds
  ``clinic_admin`` (clinic administrator) or ``clinician``; both are set again at every login;
- no such clinic, or neither role: refused with "ask your administrator", and no account is made;
- the platform administrator's role is never granted by a claim, and a platform administrator's
  account cannot be reached through single sign-on (it logs in locally, with its second factor).
The ID token is checked for signature (the provider's JWKS), issuer, audience, expiry and nonce.
"""

import dataclasses
import functools
import logging

import jwt
import requests
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.translation import gettext, gettext_lazy
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from skinweb.accounts.ip import client_ip
from skinweb.accounts.models import Clinic, ExternalIdentity
from skinweb.audit.models import AuditEvent, record

log = logging.getLogger(__name__)
ROLES = {"clinic_admin": True, "clinician": False}  # role claim value -> is_staff
SESSION_PROVIDER, SESSION_REFUSAL = "sso_provider", "sso_refusal"
ASK = gettext_lazy("Ask your administrator to give your account a clinic and a role in skinweb.")


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    label: str
    issuer: str
    client_id: str
    client_secret: str
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    userinfo_endpoint: str = ""
    jwks_uri: str = ""
    sign_algo: str = "RS256"
    scopes: str = "openid email profile"
    clinic_claim: str = "skinweb_clinic"
    role_claim: str = "skinweb_role"

    def endpoints(self) -> dict:
        """The provider's endpoints: as configured, else from its discovery document (asked once)."""
        given = {k: getattr(self, k) for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint",
                                               "jwks_uri")}
        return given if all(given.values()) else {**discover(self.issuer), **{k: v for k, v in given.items() if v}}

    def setting(self, attr, *args):
        """mozilla-django-oidc's settings, for this provider."""
        ends = self.endpoints()
        own = {
            "OIDC_OP_AUTHORIZATION_ENDPOINT": ends["authorization_endpoint"],
            "OIDC_OP_TOKEN_ENDPOINT": ends["token_endpoint"],
            "OIDC_OP_USER_ENDPOINT": ends["userinfo_endpoint"],
            "OIDC_OP_JWKS_ENDPOINT": ends["jwks_uri"],
            "OIDC_RP_CLIENT_ID": self.client_id,
            "OIDC_RP_CLIENT_SECRET": self.client_secret,
            "OIDC_RP_SIGN_ALGO": self.sign_algo,
            "OIDC_RP_SCOPES": self.scopes,
            "OIDC_AUTHENTICATION_CALLBACK_URL": "sso_callback",
            "OIDC_USE_PKCE": True,
            "OIDC_TIMEOUT": 15,
            "LOGIN_REDIRECT_URL_FAILURE": reverse("sso_refused"),
        }
        return own[attr] if attr in own else import_from_settings(attr, *args)


@functools.cache
def discover(issuer: str) -> dict:
    answer = requests.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=15)
    answer.raise_for_status()
    return answer.json()


def providers() -> dict[str, Provider]:
    """The configured providers by name (settings.OIDC_PROVIDERS, from the environment as JSON)."""
    return {p["name"]: Provider(**p) for p in settings.OIDC_PROVIDERS}


def provider(name: str) -> Provider:
    found = providers().get(name)
    if found is None:
        raise Http404("No such login provider")
    return found


class Refused(Exception):
    """The provider vouched for the person, but skinweb has no clinic and role for them."""


class SSOLogin(OIDCAuthenticationRequestView):
    """/accounts/sso/<name>/: off to the provider's login page (state, nonce and PKCE kept in the session)."""

    def __init__(self, **kwargs):
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)  # its own reads one global provider

    def get(self, request, name):
        chosen = provider(name)
        self.get_settings = chosen.setting
        self.OIDC_OP_AUTH_ENDPOINT = chosen.setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
        self.OIDC_RP_CLIENT_ID = chosen.client_id
        request.session[SESSION_PROVIDER] = name
        request.session.pop(SESSION_REFUSAL, None)
        return super().get(request)


class SSOCallback(OIDCAuthenticationCallbackView):
    """/accounts/sso/callback/: the provider sends the browser back here with a code."""

    def get(self, request):
        name = request.session.get(SESSION_PROVIDER)
        chosen = providers().get(name or "")
        if chosen is None:
            request.session[SESSION_REFUSAL] = gettext("The login took too long or was started elsewhere: start it "
                                                        "again.")
            return HttpResponseRedirect(reverse("sso_refused"))
        self.get_settings = chosen.setting
        request.oidc_provider = chosen  # for the backend
        return super().get(request)

    def login_success(self):
        response = super().login_success()
        record(self.request, "login_sso", self.user, provider=self.request.oidc_provider.name)
        return response

    def login_failure(self):
        refusal = getattr(self.request, "sso_refusal", None)
        if refusal:
            self.request.session[SESSION_REFUSAL] = refusal
        return super().login_failure()


def refused(request):
    """Where a refused or failed single sign-on ends: what happened, and whom to ask."""
    message = request.session.pop(SESSION_REFUSAL, None) or gettext("The login with your organisation did not succeed.")
    return render(request, "registration/sso_refused.html", {"message": message, "ask": str(ASK)}, status=403)


class Backend(OIDCAuthenticationBackend):
    """Authenticates the callback of a provider (and nothing else: password logins go on to Django's)."""

    def __init__(self, *args, **kwargs):
        self.UserModel = get_user_model()  # the provider's settings are bound per login, in authenticate

    def authenticate(self, request, **kwargs):
        chosen = getattr(request, "oidc_provider", None) if request is not None else None
        if chosen is None:
            return None
        self.provider, self.get_settings = chosen, chosen.setting
        self.OIDC_OP_TOKEN_ENDPOINT = chosen.setting("OIDC_OP_TOKEN_ENDPOINT")
        self.OIDC_OP_USER_ENDPOINT = chosen.setting("OIDC_OP_USER_ENDPOINT")
        self.OIDC_OP_JWKS_ENDPOINT = chosen.setting("OIDC_OP_JWKS_ENDPOINT")
        self.OIDC_RP_CLIENT_ID, self.OIDC_RP_CLIENT_SECRET = chosen.client_id, chosen.client_secret
        self.OIDC_RP_SIGN_ALGO, self.OIDC_RP_IDP_SIGN_KEY = chosen.sign_algo, None
        self.subject = ""
        try:
            return super().authenticate(request, **kwargs)
        except Refused as exc:
            request.sso_refusal = str(exc)
            AuditEvent.objects.create(action="login_sso_refused", object_type="provider", object_id=chosen.name,
                                      detail={"reason": str(exc)[:300], "subject": self.subject}, ip=client_ip(request))
            return None
        except (requests.RequestException, SuspiciousOperation, jwt.PyJWTError) as exc:
            log.warning("single sign-on with %s failed: %s", chosen.name, exc)
            return None

    def _verify_jws(self, payload, key):
        """The ID token: signature, and this client as its audience and the provider as its issuer
        (mozilla-django-oidc checks neither)."""
        header = jwt.get_unverified_header(payload)
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation("The ID token's algorithm is not the provider's.")
        return jwt.decode(payload, key, algorithms=[self.OIDC_RP_SIGN_ALGO], audience=self.OIDC_RP_CLIENT_ID,
                          issuer=self.provider.issuer, options={"require": ["exp", "iat", "iss", "aud", "sub"]})

    def get_userinfo(self, access_token, id_token, payload):
        claims = super().get_userinfo(access_token, id_token, payload)
        if claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("The user information is about another subject than the ID token.")
        return {**payload, **claims}

    def verify_claims(self, claims):
        self.subject = str(claims.get("sub", ""))[:100]
        self.clinic, self.is_staff = self.mapping(claims)
        return True

    def mapping(self, claims) -> tuple[Clinic, bool]:
        """(clinic, clinic administrator?) from the claims, or Refused."""
        name = claims.get(self.provider.clinic_claim)
        clinic = Clinic.objects.filter(name=name).first() if isinstance(name, str) else None
        if clinic is None:
            raise Refused(gettext("Your organisation's login names no clinic of this skinweb (%(name)s). %(ask)s")
                          % {"name": name or gettext("none"), "ask": ASK})
        given = claims.get(self.provider.role_claim)
        roles = set(given if isinstance(given, list) else [given])
        if not roles & set(ROLES):
            raise Refused(gettext("Your organisation's login gives you no role in skinweb. %(ask)s") % {"ask": ASK})
        return clinic, "clinic_admin" in roles

    def filter_users_by_claims(self, claims):
        return self.UserModel.objects.filter(external_identities__issuer=self.provider.issuer,
                                             external_identities__subject=str(claims["sub"]))

    def create_user(self, claims):
        base = (claims.get("preferred_username") or str(claims.get("email", "")).split("@")[0] or "user")[:100]
        with transaction.atomic():
            for attempt in range(5):
                suffix = "" if attempt == 0 else f"-{get_random_string(4).lower()}"
                username = f"{base}@{self.provider.name}{suffix}"[:150]
                try:
                    with transaction.atomic():
                        user = self.UserModel.objects.create_user(
                            username, email=claims.get("email", ""), clinic=self.clinic, is_staff=self.is_staff,
                            first_name=str(claims.get("given_name", ""))[:150],
                            last_name=str(claims.get("family_name", ""))[:150])
                    break
                except IntegrityError:
                    continue
            else:
                raise SuspiciousOperation("No free username for this account")
            user.set_unusable_password()
            user.save(update_fields=["password"])
            ExternalIdentity.objects.create(user=user, issuer=self.provider.issuer, subject=str(claims["sub"]),
                                            provider=self.provider.name, last_login_at=timezone.now())
        record(None, "create", user, source=f"single sign-on ({self.provider.name})", clinic=self.clinic.pk,
               clinic_admin=self.is_staff)
        return user

    def update_user(self, user, claims):
        if user.is_superuser:
            raise Refused(gettext("The platform administrator logs in here with a password and a second factor, "
                                  "not through an organisation's login."))
        old = {"clinic": user.clinic_id, "clinic_admin": user.is_staff}
        user.clinic, user.is_staff = self.clinic, self.is_staff
        user.save(update_fields=["clinic", "is_staff"])
        new = {"clinic": user.clinic_id, "clinic_admin": user.is_staff}
        if new != old:
            record(None, "update", user, source=f"single sign-on ({self.provider.name})", old=old, new=new)
        ExternalIdentity.objects.filter(user=user, issuer=self.provider.issuer).update(last_login_at=timezone.now())
        return user



class LoginForm(AuthenticationForm):
    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        if not settings.LOCAL_LOGIN and not user.is_superuser:
            raise forms.ValidationError(gettext("Password login is off here: log in with your organisation's account."),
                                        code="local_login_off")


class LoginPage(auth_views.LoginView):
    """Django's login page, with a button per single sign-on provider; the password form goes when
    LOCAL_LOGIN is off (it stays for the platform administrator, whom no provider may vouch for)."""

    authentication_form = LoginForm
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "providers": list(providers().values()),
                "local_login": settings.LOCAL_LOGIN}
