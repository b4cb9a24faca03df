from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from skinweb.accounts.models import Clinic, User


@admin.register(Clinic)
class ClinicAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]


@admin.register(User)
class ClinicUserAdmin(UserAdmin):
    list_display = ["username", "first_name", "last_name", "clinic", "is_staff", "is_active"]
    list_filter = ["clinic", "is_staff", "is_superuser", "is_active"]
    fieldsets = UserAdmin.fieldsets + (("Clinic", {"fields": ["clinic"]}),)
    add_fieldsets = UserAdmin.add_fieldsets + (("Clinic", {"fields": ["clinic"]}),)
