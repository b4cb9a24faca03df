from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from skinweb.accounts.models import Clinic, User
from skinweb.accounts.scoping import ClinicScopedAdmin


@admin.register(Clinic)
class ClinicAdmin(ClinicScopedAdmin):
    """Clinics are created by the platform administrator; a clinic administrator sees their own."""

    clinic_lookup = "id"
    list_display = ["name", "created_at"]
    search_fields = ["name"]

    def has_change_permission(self, request, obj=None):
        return request.user.is_platform_admin


@admin.register(User)
class ClinicUserAdmin(ClinicScopedAdmin, UserAdmin):
    """The platform administrator manages every account; a clinic administrator the accounts of
    their clinic (clinicians and fellow clinic administrators), never a superuser, another clinic,
    or permissions beyond those two roles."""

    clinic_admin_can_add = True
    list_display = ["username", "first_name", "last_name", "clinic", "practice", "role_name", "is_active"]
    list_filter = ["clinic", "is_staff", "is_superuser", "is_active"]
    fieldsets = UserAdmin.fieldsets + (("Clinic, or referring practice", {
        "fields": ["clinic", "practice"],
        "description": "A member of a clinic, or (no clinic) a referrer of a practice."}),)
    add_fieldsets = UserAdmin.add_fieldsets + (("Clinic, or referring practice", {"fields": ["clinic", "practice"]}),)
    clinic_admin_fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Role in your clinic", {"fields": ("is_active", "is_staff"),
                                 "description": "Staff status makes the account a clinic administrator."}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )

    @admin.display(description="role")
    def role_name(self, user):
        return user.role.label

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_platform_admin else qs.exclude(is_superuser=True)

    def get_fieldsets(self, request, obj=None):
        if request.user.is_platform_admin:
            return super().get_fieldsets(request, obj)
        return UserAdmin.add_fieldsets if obj is None else self.clinic_admin_fieldsets

    def get_readonly_fields(self, request, obj=None):
        return ["last_login", "date_joined"] if not request.user.is_platform_admin and obj else []

    def save_model(self, request, obj, form, change):
        if not request.user.is_platform_admin:
            obj.clinic_id = request.user.clinic_id
            obj.is_superuser = False
        super().save_model(request, obj, form, change)
