from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "skinweb.api"
    verbose_name = "REST API: tokens"

    def ready(self):
        from skinweb.api import schema  # noqa: F401  (registers the token scheme with drf-spectacular)
