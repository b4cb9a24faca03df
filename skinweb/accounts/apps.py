from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "skinweb.accounts"
    verbose_name = _("Clinics and users")

    def ready(self):
        # A visitor who has not logged in has no role: pages and the admin (its login page lists the apps
        # the visitor may see) ask every user for one.
        from django.contrib.auth.models import AnonymousUser

        from skinweb.accounts.models import Role

        AnonymousUser.role = Role.NONE
        AnonymousUser.is_platform_admin = False
        AnonymousUser.is_clinic_admin = False
        AnonymousUser.is_referrer = False
