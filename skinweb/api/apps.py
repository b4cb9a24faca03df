from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ApiConfig(AppConfig):
    name = "skinweb.api"
    verbose_name = _("REST API: tokens")

    def ready(self):
        from skinweb.api import schema  # noqa: F401  (registers the token scheme with drf-spectacular)
