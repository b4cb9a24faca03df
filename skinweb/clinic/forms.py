import datetime

from django import forms
from django.utils import formats, timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from skinweb.clinic.models import ANATOMIC_SITES, Case, Feedback, Label, Lesion, Patient


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = ["identifier", "birth_year", "sex"]

    def __init__(self, *args, clinic, **kwargs):
        super().__init__(*args, **kwargs)
        self.clinic = clinic

    def clean_identifier(self):
        identifier = self.cleaned_data["identifier"].strip()
        clash = Patient.objects.filter(clinic=self.clinic, identifier__iexact=identifier)
        if self.instance.pk:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError(_("Your clinic already has a patient with this identifier."))
        return identifier

    def clean_birth_year(self):
        year = self.cleaned_data["birth_year"]
        if not 1900 <= year <= datetime.date.today().year:
            raise forms.ValidationError(gettext("Enter a year between 1900 and %(year)s.")
                                        % {"year": datetime.date.today().year})
        return year


class LesionForm(forms.ModelForm):
    class Meta:
        model = Lesion
        fields = ["site", "label"]


CHOOSE_IMAGES = _("Choose one or more JPEG or PNG images.")


class MultipleImageInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Several files in one field; each is checked separately by the view (uploads.normalise_image)."""

    def __init__(self, *args, empty_message=CHOOSE_IMAGES, **kwargs):
        kwargs.setdefault("widget", MultipleImageInput(attrs={"accept": "image/jpeg,image/png", "multiple": True}))
        super().__init__(*args, **kwargs)
        self.empty_message = empty_message

    def clean(self, data, initial=None):
        files = data if isinstance(data, (list, tuple)) else [data]
        files = [f for f in files if f]
        if not files:
            raise forms.ValidationError(self.empty_message)
        return files


class UploadForm(forms.Form):
    images = MultipleImageField(label=_("Dermoscopic images"), help_text=_("JPEG or PNG; several at once are fine."))


class DicomImportForm(forms.Form):
    files = MultipleImageField(
        label=_("DICOM files"), help_text=_("VL Photographic, Dermoscopic Photography or Secondary Capture objects"),
        empty_message=_("Choose one or more DICOM files."),
        widget=MultipleImageInput(attrs={"accept": ".dcm,application/dicom", "multiple": True}))
    site = forms.ChoiceField(required=False, choices=[("", _("From each file's anatomic region")), *ANATOMIC_SITES],
                             label=_("Lesion site"))


class FeedbackForm(forms.ModelForm):
    agrees_with_ai = forms.TypedChoiceField(
        label=_("Do you agree with the AI's decision?"),
        choices=[("yes", _("Yes, I agree")), ("no", _("No, I disagree"))],
        coerce=lambda v: v == "yes",
        widget=forms.RadioSelect,
    )

    class Meta:
        model = Feedback
        fields = [
            "agrees_with_ai",
            "clinical_diagnosis",
            "management",
            "histopathology_result",
            "histopathology_date",
            "notes",
        ]
        widgets = {
            "histopathology_date": forms.DateInput(attrs={"type": "date"}),
            "notes": forms.Textarea(attrs={"rows": 3}),
        }

    def __init__(self, *args, case=None, **kwargs):
        super().__init__(*args, **kwargs)
        if case is not None and case.shown_prediction is None:
            # No AI decision on the page (withheld, pending, failed): nothing to agree with.
            del self.fields["agrees_with_ai"]
        elif self.instance.pk and self.instance.agrees_with_ai is not None:
            self.initial["agrees_with_ai"] = "yes" if self.instance.agrees_with_ai else "no"

    def clean(self):
        data = super().clean()
        if data.get("histopathology_date") and not data.get("histopathology_result"):
            self.add_error("histopathology_result", _("Give the histopathology result for this date."))
        if data.get("histopathology_date") and data["histopathology_date"] > datetime.date.today():
            self.add_error("histopathology_date", _("The date is in the future."))
        return data


class CaseFilterForm(forms.Form):
    """The case history's filters, from the query string. Invalid values are ignored, not errors."""

    q = forms.CharField(required=False, label=_("Patient identifier"))
    patient = forms.IntegerField(required=False, widget=forms.HiddenInput)
    status = forms.ChoiceField(required=False, label=_("Status"), choices=[("", _("Any status"))] + Case.Status.choices)
    decision = forms.ChoiceField(required=False, label=_("AI decision"),
                                 choices=[("", _("Any AI decision"))] + Label.choices)
    feedback = forms.ChoiceField(
        required=False, label=_("Feedback"),
        choices=[("", _("Any")), ("given", _("Given")), ("missing", _("Missing"))],
    )
    disagreement = forms.BooleanField(required=False, label=_("Only AI/clinician disagreements"))

    def filter(self, cases):
        if not self.is_valid():
            return cases
        data = self.cleaned_data
        if data["q"]:
            cases = cases.filter(lesion__patient__identifier__icontains=data["q"].strip())
        if data["patient"]:
            cases = cases.filter(lesion__patient_id=data["patient"])
        if data["status"]:
            cases = cases.filter(status=data["status"])
        if data["decision"]:
            cases = cases.filter(prediction__decision=data["decision"])
        if data["feedback"] == "given":
            cases = cases.filter(feedback__isnull=False)
        elif data["feedback"] == "missing":
            cases = cases.filter(feedback__isnull=True)
        if data["disagreement"]:
            cases = cases.disagreements()
        return cases


class TruthForm(forms.Form):
    """The ground truth of one or more cases: the relabel queue and the Django admin's bulk action."""

    label = forms.ChoiceField(choices=Label.choices)
    source = forms.ChoiceField(choices=Case.TruthSource.choices)
    use_for_training = forms.BooleanField(required=False, initial=False, label=_("Use for training"))


class TakenForm(forms.Form):
    """The day an image was taken: it decides which visit of the lesion the image belongs to."""

    taken_on = forms.DateField(label=_("Taken on"))

    def clean_taken_on(self):
        day = self.cleaned_data["taken_on"]
        if not datetime.date(1990, 1, 1) <= day <= timezone.localdate():
            raise forms.ValidationError(gettext("Enter a date between %(first)s and today (%(today)s).") % {
                "first": formats.date_format(datetime.date(1990, 1, 1), "SHORT_DATE_FORMAT"),
                "today": formats.date_format(timezone.localdate(), "SHORT_DATE_FORMAT")})
        return day


class RemovalForm(forms.Form):
    """Why an image is removed: kept with it, shown to the administrator who may restore it."""

    reason = forms.CharField(label=_("Reason"), max_length=500, strip=True)
