from django.contrib import admin

from skinweb.accounts.scoping import ClinicScopedAdmin
from skinweb.referrals.models import Answer, Practice, Referral


@admin.register(Practice)
class PracticeAdmin(admin.ModelAdmin):
    """Practices and the clinics they refer to: the platform administrator (clinic administrators link practices
    on their clinic's page, referrals:practices)."""

    list_display = ["name", "code", "email", "created_at"]
    search_fields = ["name", "code"]
    filter_horizontal = ["clinics"]

    def has_module_permission(self, request):
        return request.user.is_platform_admin

    def has_view_permission(self, request, obj=None):
        return request.user.is_platform_admin

    has_change_permission = has_add_permission = has_delete_permission = has_view_permission


class AnswerInline(admin.TabularInline):
    model = Answer
    extra = 0
    can_delete = False
    readonly_fields = ["action", "message", "created_at", "created_by"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Referral)
class ReferralAdmin(ClinicScopedAdmin):
    """Read-only here: referrals are answered on the triage pages (audited there)."""

    list_display = ["pk", "practice", "clinic", "status", "urgency", "checklist_score", "created_at"]
    list_filter = ["status", "urgency"]
    inlines = [AnswerInline]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Referral._meta.fields]

    def has_change_permission(self, request, obj=None):
        return False
