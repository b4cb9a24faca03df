from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import render
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from skinweb.accounts.scoping import ClinicScopedAdmin
from skinweb.audit.models import record
from skinweb.clinic.forms import TruthForm
from skinweb.clinic.models import Case, Feedback, Lesion, Patient, Prediction


def is_admin(user) -> bool:
    return user.is_platform_admin or user.is_clinic_admin


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        return is_admin(request.user)  # the parent row is already in the user's scope

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class PredictionInline(ReadOnlyInline):
    model = Prediction
    fields = ["model_version", "probability", "threshold", "decision", "elapsed_ms", "device", "created_at"]
    readonly_fields = fields


class FeedbackInline(ReadOnlyInline):
    model = Feedback
    fields = ["revision", "agrees_with_ai", "clinical_diagnosis", "management", "histopathology_result",
              "histopathology_date", "notes", "created_by", "created_at"]
    readonly_fields = fields


class LesionInline(admin.TabularInline):
    model = Lesion
    extra = 0
    fields = ["site", "label", "created_at"]
    readonly_fields = ["created_at"]

    def has_view_permission(self, request, obj=None):
        return is_admin(request.user)

    def has_add_permission(self, request, obj=None):
        return is_admin(request.user)

    def has_change_permission(self, request, obj=None):
        return is_admin(request.user)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_platform_admin


@admin.register(Patient)
class PatientAdmin(ClinicScopedAdmin):
    list_display = ["identifier", "clinic", "birth_year", "sex", "created_at"]
    list_filter = ["clinic", "sex"]
    search_fields = ["identifier"]
    inlines = [LesionInline]


@admin.register(Lesion)
class LesionAdmin(ClinicScopedAdmin):
    clinic_lookup = "patient__clinic_id"
    list_display = ["id", "patient", "site", "label", "created_at"]
    list_filter = ["site", "patient__clinic"]
    search_fields = ["patient__identifier", "label"]
    list_select_related = ["patient"]


class CaseAdminForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ["truth_label", "truth_source", "use_for_training"]

    def clean(self):
        data = super().clean()
        Case.validate_truth(data.get("truth_label", ""), data.get("truth_source", ""), data.get("use_for_training"))
        return data


@admin.register(Case)
class CaseAdmin(ClinicScopedAdmin):
    form = CaseAdminForm
    list_display = ["id", "created_at", "patient_identifier", "clinic", "status", "ai_decision",
                    "truth_label", "truth_source", "use_for_training"]
    list_filter = ["status", "prediction__decision", "truth_label", "truth_source", "use_for_training",
                   "lesion__patient__clinic"]
    search_fields = ["lesion__patient__identifier", "sha256", "original_name"]
    list_select_related = ["lesion__patient__clinic", "prediction"]
    date_hierarchy = "created_at"
    actions = ["set_ground_truth", "include_in_training", "exclude_from_training"]
    inlines = [PredictionInline, FeedbackInline]
    fieldsets = [
        (None, {"fields": ["lesion", "image", "original_name", "sha256", "width", "height", "created_at",
                           "created_by", "status", "failure_reason", "attempts"]}),
        (_("Ground truth for retraining"), {"fields": ["truth_label", "truth_source", "use_for_training",
                                                    "truth_set_by", "truth_set_at"]}),
    ]
    readonly_fields = ["lesion", "image", "original_name", "sha256", "width", "height", "created_at",
                       "created_by", "status", "failure_reason", "attempts", "truth_set_by", "truth_set_at"]

    def has_add_permission(self, request):
        return False  # cases come from uploads

    @admin.display(description=_("patient"), ordering="lesion__patient__identifier")
    def patient_identifier(self, case):
        return case.lesion.patient.identifier

    @admin.display(description=_("AI decision"), ordering="prediction__decision")
    def ai_decision(self, case):
        return case.prediction.decision_display if case.prediction else "—"

    def save_model(self, request, case, form, change):
        # The form holds only the truth fields: saved through Case.relabel, as the relabel queue does.
        if form.changed_data:
            stored = Case.objects.get(pk=case.pk)
            old, new = stored.relabel(request.user, case.truth_label, case.truth_source, case.use_for_training)
            record(request, "relabel", stored, old=old, new=new)

    @admin.action(description=_("Set ground truth of selected cases…"))
    def set_ground_truth(self, request, queryset):
        form = TruthForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            data = form.cleaned_data
            for case in queryset:
                old, new = case.relabel(request.user, data["label"], data["source"], data["use_for_training"])
                record(request, "relabel", case, old=old, new=new)
            n = queryset.count()
            self.message_user(request, ngettext("Ground truth set on %(n)d case.", "Ground truth set on %(n)d cases.",
                                                n) % {"n": n}, messages.SUCCESS)
            return None
        return render(request, "admin/clinic/case/set_ground_truth.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Set ground truth"),
            "cases": queryset,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })

    @admin.action(description=_("Use selected cases for training"))
    def include_in_training(self, request, queryset):
        self._set_training(request, queryset, True)

    @admin.action(description=_("Do not use selected cases for training"))
    def exclude_from_training(self, request, queryset):
        self._set_training(request, queryset, False)

    def _set_training(self, request, queryset, value):
        updated = skipped = 0
        for case in queryset:
            try:
                old, new = case.set_training(request.user, value)
            except ValidationError:
                skipped += 1
                continue
            record(request, "relabel", case, old=old, new=new)
            updated += 1
        self.message_user(request, ngettext("Updated %(n)d case.", "Updated %(n)d cases.", updated) % {"n": updated},
                          messages.SUCCESS)
        if skipped:
            self.message_user(request, ngettext("%(n)d case has no ground truth yet and was left out of training.",
                                                "%(n)d cases have no ground truth yet and were left out of training.",
                                                skipped) % {"n": skipped},
                              messages.WARNING)


@admin.register(Prediction)
class PredictionAdmin(ClinicScopedAdmin):
    clinic_lookup = "case__clinic_id"
    list_display = ["case", "model_version", "probability", "threshold", "decision", "elapsed_ms", "created_at"]
    list_filter = ["decision", "model_version"]
    readonly_fields = [f.name for f in Prediction._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
