from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.translation import gettext_lazy as _


class Clinic(models.Model):
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    require_two_factor = models.BooleanField(
        default=False, help_text=_("Everyone of the clinic logs in with a second factor (set by its administrator)"))
    referral_target_urgent_days = models.PositiveSmallIntegerField(
        default=14, help_text=_("An urgent referral waiting longer is marked in the triage list"))
    referral_target_routine_days = models.PositiveSmallIntegerField(
        default=90, help_text=_("A routine referral waiting longer is marked in the triage list"))

    class Meta:
        verbose_name = _("clinic")
        verbose_name_plural = _("clinics")

    def __str__(self):
        return self.name


class Role(models.TextChoices):
    """Who may do what (README, "Roles"). The role follows from the user's flags and clinic."""

    PLATFORM_ADMIN = "platform_admin", "Platform administrator"
    CLINIC_ADMIN = "clinic_admin", "Clinic administrator"
    CLINICIAN = "clinician", "Clinician"
    REFERRER = "referrer", "Referrer (a referring practice)"
    NONE = "none", "No role"


class User(AbstractUser):
    """A clinician belongs to one clinic and sees only that clinic's patients.

    Roles: a superuser is the platform administrator (the shared model registry, every clinic, in
    the Django admin; clinical pages only for a clinic they belong to); staff of a clinic is that
    clinic's administrator (its users, its cases' ground truth, its audit trail); any other member
    of a clinic is a clinician. A member of a referring practice (and of no clinic) is a referrer: they send
    referrals and read the answers, nothing else. Staff without a clinic who is not a superuser has no role.
    """

    clinic = models.ForeignKey(Clinic, null=True, blank=True, on_delete=models.PROTECT, related_name="users")
    practice = models.ForeignKey("referrals.Practice", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="users", help_text="A referrer's practice (and no clinic)")
    # Empty: the browser's language, else the installation's (LANGUAGE_CODE).
    language = models.CharField(_("language"), max_length=8, blank=True, choices=settings.LANGUAGES)

    def __str__(self):
        return self.get_full_name() or self.username

    @property
    def role(self) -> Role:
        if not self.is_active:
            return Role.NONE
        if self.is_superuser:
            return Role.PLATFORM_ADMIN
        if self.clinic_id is None:
            return Role.REFERRER if self.practice_id is not None and not self.is_staff else Role.NONE
        return Role.CLINIC_ADMIN if self.is_staff else Role.CLINICIAN

    @property
    def is_platform_admin(self) -> bool:
        return self.role == Role.PLATFORM_ADMIN

    @property
    def is_clinic_admin(self) -> bool:
        return self.role == Role.CLINIC_ADMIN

    @property
    def is_referrer(self) -> bool:
        return self.role == Role.REFERRER


class ExternalIdentity(models.Model):
    """A person as an OpenID Connect provider knows them (issuer and subject), and their account here."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="external_identities")
    provider = models.CharField(max_length=50, help_text="The provider's name in OIDC_PROVIDERS")
    issuer = models.CharField(max_length=300)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("external identity")
        verbose_name_plural = _("external identities")
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="one_account_per_subject")]

    def __str__(self):
        return f"{self.subject} at {self.provider}"
