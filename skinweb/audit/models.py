from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from skinweb.accounts.ip import client_ip


class AuditEvent(models.Model):
    """Who did what to which record, when and from where. Append-only."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    clinic = models.ForeignKey("accounts.Clinic", null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=50, db_index=True)
    object_type = models.CharField(max_length=50)
    object_id = models.CharField(max_length=50)
    detail = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        ordering = ["-at"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M} {self.user} {self.action} {self.object_type} {self.object_id}"


def clinic_id_of(obj) -> int | None:
    """The clinic a record belongs to (a patient, lesion, case or feedback), or None (a model version)."""
    for path in ("clinic_id", "patient.clinic_id", "case.clinic_id"):
        value = obj
        for part in path.split("."):
            value = getattr(value, part, None)
        if value is not None:
            return value
    return None


def record(request, action: str, obj, **detail) -> AuditEvent:
    """Record an event for ``obj``; ``request`` may be None for work done by a worker or command.

    The event belongs to the record's clinic (so that clinic's administrator reads it in its trail),
    or to the acting user's clinic for records of no clinic."""
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and not user.is_authenticated:
        user = None
    clinic_id = clinic_id_of(obj)
    return AuditEvent.objects.create(
        user=user,
        clinic_id=clinic_id if clinic_id is not None else getattr(user, "clinic_id", None),
        action=action,
        object_type=obj._meta.model_name,
        object_id=str(obj.pk),
        detail=detail,
        ip=client_ip(request) if request is not None else None,
    )
