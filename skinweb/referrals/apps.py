from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ReferralsConfig(AppConfig):
    name = "skinweb.referrals"
    verbose_name = _("Referrals: practices, referrals, answers")
    default_auto_field = "django.db.models.BigAutoField"
