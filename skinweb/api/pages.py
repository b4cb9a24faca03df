"""The pages around the API: its docs (Swagger UI, served from this site: nothing loads from elsewhere)
and the tokens page, where a signed-in user makes a token (shown once) and revokes tokens: their own,
a clinic administrator also their clinic's users', the platform administrator anyone's."""

import datetime

from django import forms
from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from skinweb.api.models import ApiToken
from skinweb.audit.models import record


def tokens_for(user):
    """The tokens ``user`` may see and revoke (the API's /tokens/ answers the same)."""
    tokens = ApiToken.objects.select_related("user")
    if user.is_platform_admin:
        return tokens
    if user.is_clinic_admin:
        return tokens.filter(user__clinic_id=user.clinic_id) | tokens.filter(user=user)
    return tokens.filter(user=user)


class TokenForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100,
                           help_text=_("What it is for, e.g. 'dermatoscope bridge, room 2'"))
    days = forms.IntegerField(label=_("Valid for (days)"), min_value=1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["days"].initial = settings.API_TOKEN_DAYS
        self.fields["days"].widget.attrs["max"] = settings.API_TOKEN_DAYS

    def clean_days(self):
        days = self.cleaned_data["days"]
        if days > settings.API_TOKEN_DAYS:
            raise forms.ValidationError(gettext("At most %(days)s days (API_TOKEN_DAYS).")
                                        % {"days": settings.API_TOKEN_DAYS})
        return days


@never_cache
@require_http_methods(["GET", "POST"])
def token_page(request):
    form = TokenForm(request.POST if request.method == "POST" else None)
    new = None
    if request.method == "POST" and form.is_valid():
        live = ApiToken.objects.filter(user=request.user)
        if live.count() >= settings.REST_KNOX["TOKEN_LIMIT_PER_USER"]:
            form.add_error(None, gettext("You have as many tokens as allowed: revoke one first."))
        else:
            expiry = datetime.timedelta(days=form.cleaned_data["days"])
            instance, new = ApiToken.objects.create(request.user, expiry=expiry, name=form.cleaned_data["name"])
            record(request, "create_token", request.user, token=instance.token_key, name=instance.name,
                   expiry=instance.expiry.isoformat())
            form = TokenForm()
    tokens = tokens_for(request.user).order_by("user__username", "-created")
    # never_cache: the new token is on this page once, and stays in no cache.
    return render(request, "api/tokens.html", {"form": form, "new": new, "tokens": tokens})


@require_POST
def token_revoke(request, key):
    token = tokens_for(request.user).filter(token_key=key).first()
    if token is None:
        messages.error(request, gettext("No such token (it may have expired or been revoked already)."))
    else:
        record(request, "revoke_token", token.user, token=token.token_key, name=token.name)
        token.delete()
        messages.success(request, gettext("Token %(name)s (%(key)s…) revoked: it no longer works.") % {
            "name": token.name, "key": token.token_key})
    return redirect("api_tokens")


@require_GET
def api_docs(request):
    return render(request, "api/docs.html")
