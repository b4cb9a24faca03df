from django.apps import AppConfig


class ClinicConfig(AppConfig):
    name = "skinweb.clinic"
    verbose_name = "Clinic: patients, lesions, cases"

    def ready(self):
        from skinweb import checks  # noqa: F401  (registers the deployment checks)
