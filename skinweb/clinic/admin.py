from django import forms
from django.contrib import admin, messages
from django.shortcuts import render
from django.utils import timezone

from skinweb.audit.models import record
from skinweb.clinic.models import Case, Feedback, Label, Lesion, Patient, Prediction


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

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


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["identifier", "clinic", "birth_year", "sex", "created_at"]
    list_filter = ["clinic", "sex"]
    search_fields = ["identifier"]
    inlines = [LesionInline]


@admin.register(Lesion)
class LesionAdmin(admin.ModelAdmin):
    list_display = ["id", "patient", "site", "label", "created_at"]
    list_filter = ["site", "patient__clinic"]
    search_fields = ["patient__identifier", "label"]
    list_select_related = ["patient"]


class TruthForm(forms.Form):
    label = forms.ChoiceField(choices=Label.choices)
    source = forms.ChoiceField(choices=Case.TruthSource.choices)
    use_for_training = forms.BooleanField(required=False, initial=True, label="Use for training")


class CaseAdminForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ["truth_label", "truth_source", "use_for_training"]

    def clean(self):
        data = super().clean()
        if bool(data.get("truth_label")) != bool(data.get("truth_source")):
            raise forms.ValidationError("Give both the ground truth and its source, or neither.")
        if data.get("use_for_training") and not data.get("truth_label"):
            self.add_error("use_for_training", "Only a case with a ground truth can be used for training.")
        return data


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
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
        ("Ground truth for retraining", {"fields": ["truth_label", "truth_source", "use_for_training",
                                                    "truth_set_by", "truth_set_at"]}),
    ]
    readonly_fields = ["lesion", "image", "original_name", "sha256", "width", "height", "created_at",
                       "created_by", "status", "failure_reason", "attempts", "truth_set_by", "truth_set_at"]

    def has_add_permission(self, request):
        return False  # cases come from uploads

    @admin.display(description="patient", ordering="lesion__patient__identifier")
    def patient_identifier(self, case):
        return case.lesion.patient.identifier

    @admin.display(description="AI decision", ordering="prediction__decision")
    def ai_decision(self, case):
        return case.prediction.decision if case.prediction else "—"

    def save_model(self, request, case, form, change):
        if {"truth_label", "truth_source"} & set(form.changed_data):
            case.truth_set_by = request.user
            case.truth_set_at = timezone.now()
        super().save_model(request, case, form, change)
        if form.changed_data:
            record(request, "relabel", case, **{f: str(form.cleaned_data[f]) for f in form.changed_data})

    @admin.action(description="Set ground truth of selected cases…")
    def set_ground_truth(self, request, queryset):
        form = TruthForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for case in queryset:
                case.set_truth(form.cleaned_data["label"], form.cleaned_data["source"], request.user,
                               use_for_training=form.cleaned_data["use_for_training"])
                record(request, "relabel", case, truth_label=case.truth_label, truth_source=case.truth_source,
                       use_for_training=case.use_for_training)
            self.message_user(request, f"Ground truth set on {queryset.count()} case(s).", messages.SUCCESS)
            return None
        return render(request, "admin/clinic/case/set_ground_truth.html", {
            **self.admin_site.each_context(request),
            "title": "Set ground truth",
            "cases": queryset,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })

    @admin.action(description="Use selected cases for training")
    def include_in_training(self, request, queryset):
        self._set_training(request, queryset, True)

    @admin.action(description="Do not use selected cases for training")
    def exclude_from_training(self, request, queryset):
        self._set_training(request, queryset, False)

    def _set_training(self, request, queryset, value):
        for case in queryset:
            if value and not case.truth_label:
                continue
            case.use_for_training = value
            case.save(update_fields=["use_for_training"])
            record(request, "relabel", case, use_for_training=value)
        skipped = queryset.filter(truth_label="").count() if value else 0
        self.message_user(request, f"Updated {queryset.count() - skipped} case(s).", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} case(s) have no ground truth yet and were left out of training.",
                              messages.WARNING)


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ["case", "model_version", "probability", "threshold", "decision", "elapsed_ms", "created_at"]
    list_filter = ["decision", "model_version"]
    readonly_fields = [f.name for f in Prediction._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
