from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "skinweb.accounts"
    verbose_name = "Clinics and users"
