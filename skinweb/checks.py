"""Deployment checks: `manage.py check --deploy` fails on settings that must never reach production."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def production_settings(app_configs, **kwargs):
    errors = []
    if settings.SECRET_KEY == settings.INSECURE_SECRET_KEY or len(settings.SECRET_KEY) < 50:
        errors.append(Error("SECRET_KEY is unset or a placeholder.", hint="Set SECRET_KEY to 50+ random characters.",
                            id="skinweb.E001"))
    if settings.DEBUG:
        errors.append(Error("DEBUG is on.", hint="Unset DEBUG in production.", id="skinweb.E002"))
    return errors
