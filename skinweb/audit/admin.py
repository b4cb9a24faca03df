from django.contrib import admin

from skinweb.accounts.scoping import ClinicScopedAdmin
from skinweb.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ClinicScopedAdmin):
    """A clinic administrator reads their clinic's trail; the platform administrator every clinic's."""

    list_display = ["at", "user", "clinic", "action", "object_type", "object_id", "ip"]
    list_filter = ["action", "object_type", "clinic"]
    search_fields = ["object_id", "user__username"]
    date_hierarchy = "at"

    # The trail is evidence: it can be read but never edited or deleted from the UI.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
