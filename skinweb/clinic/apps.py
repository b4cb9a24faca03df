from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ClinicConfig(AppConfig):
    name = "skinweb.clinic"
    verbose_name = _("Clinic: patients, lesions, cases")

    def ready(self):
        from skinweb import checks  # noqa: F401  (registers the deployment checks)
