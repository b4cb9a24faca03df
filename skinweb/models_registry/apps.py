from django.apps import AppConfig


class ModelsRegistryConfig(AppConfig):
    name = "skinweb.models_registry"
    verbose_name = "Model versions"
