from django.apps import AppConfig


class ClinicConfig(AppConfig):
    name = "skinweb.clinic"
    verbose_name = "Clinic: patients, lesions, cases"
