"""The Django admin, scoped by role: the platform administrator sees every clinic's rows; a clinic
administrator sees and changes only their own clinic's (and never the shared model registry, which
keeps Django's default: superusers only)."""

from django.contrib import admin


class ClinicScopedAdmin(admin.ModelAdmin):
    """``clinic_lookup`` leads from a row to its clinic's id (``clinic_id``, ``patient__clinic_id``…).

    Clinic administrators may view and change their clinic's rows; adding and deleting stay with the
    platform administrator unless a subclass allows them (``clinic_admin_can_add``)."""

    clinic_lookup = "clinic_id"
    clinic_admin_can_add = False

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        user = request.user
        if user.is_platform_admin:
            return qs
        if user.is_clinic_admin:
            return qs.filter(**{self.clinic_lookup: user.clinic_id})
        return qs.none()

    def in_scope(self, request, obj=None) -> bool:
        user = request.user
        if user.is_platform_admin:
            return True
        if not user.is_clinic_admin:
            return False
        return obj is None or self.get_queryset(request).filter(pk=obj.pk).exists()

    def has_module_permission(self, request):
        return request.user.is_platform_admin or request.user.is_clinic_admin

    def has_view_permission(self, request, obj=None):
        return self.in_scope(request, obj)

    def has_change_permission(self, request, obj=None):
        return self.in_scope(request, obj)

    def has_add_permission(self, request, *args):
        return request.user.is_platform_admin or (self.clinic_admin_can_add and request.user.is_clinic_admin)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_platform_admin

    def get_list_filter(self, request):
        """No filter by clinic for a clinic administrator: it would list the other clinics' names."""
        filters = super().get_list_filter(request)
        if request.user.is_platform_admin:
            return filters
        return [f for f in filters if not (isinstance(f, str) and "clinic" in f)]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        """A clinic administrator picks only among their clinic's rows (clinics, patients, users…)."""
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if request.user.is_clinic_admin and field is not None:
            related = db_field.related_model
            lookup = {"Clinic": "id", "User": "clinic_id", "Patient": "clinic_id", "Lesion": "patient__clinic_id",
                      "Case": "clinic_id"}.get(related.__name__)
            if lookup:
                field.queryset = field.queryset.filter(**{lookup: request.user.clinic_id})
        return field
