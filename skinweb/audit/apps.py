from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "skinweb.audit"
    verbose_name = "Audit trail"
