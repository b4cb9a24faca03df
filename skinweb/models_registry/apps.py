from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ModelsRegistryConfig(AppConfig):
    name = "skinweb.models_registry"
    verbose_name = _("Model versions")
