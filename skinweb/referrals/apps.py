from django.apps import AppConfig


class ReferralsConfig(AppConfig):
    name = "skinweb.referrals"
    default_auto_field = "django.db.models.BigAutoField"
