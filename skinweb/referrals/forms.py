import datetime

from django import forms

from skinweb.clinic.forms import MultipleImageField
from skinweb.referrals.models import MAJOR_FEATURES, MINOR_FEATURES, Answer, Referral

MAX_DURATION_MONTHS = 1200


class ReferralForm(forms.ModelForm):
    """A practice's referral: the patient as the practice knows them, the lesion, the weighted 7-point checklist,
    the images. The images are checked by the view (each as an upload is); the rest here."""

    clinic = forms.ModelChoiceField(queryset=None, label="Send to", empty_label=None)
    images = MultipleImageField(label="Dermoscopic images",
                                help_text="One or more, JPEG or PNG, taken with a dermatoscope",
                                empty_message="Add at least one dermoscopic image of the lesion.")
    overview = forms.FileField(label="Clinical overview photograph (optional)", required=False,
                               help_text="Where the lesion is on the body; not classified",
                               widget=forms.ClearableFileInput(attrs={"accept": "image/jpeg,image/png"}))

    class Meta:
        model = Referral
        fields = ["clinic", "patient_identifier", "birth_year", "sex", "site",
                  *[f for f, _ in MAJOR_FEATURES], *[f for f, _ in MINOR_FEATURES], "duration_months", "history",
                  "urgency"]
        labels = dict(MAJOR_FEATURES + MINOR_FEATURES)
        widgets = {"history": forms.Textarea(attrs={"rows": 3})}
        help_texts = {"history": "What the patient reports, relevant history. No names or contact details."}

    def __init__(self, *args, practice, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["clinic"].queryset = practice.clinics.order_by("name")
        self.fields["duration_months"].widget.attrs.update({"min": 0, "max": MAX_DURATION_MONTHS})

    def clean_patient_identifier(self):
        value = self.cleaned_data["patient_identifier"].strip()
        if not value:
            raise forms.ValidationError("Give the practice's identifier of the patient.")
        return value

    def clean_birth_year(self):
        year = self.cleaned_data["birth_year"]
        if not 1900 <= year <= datetime.date.today().year:
            raise forms.ValidationError(f"Enter a year between 1900 and {datetime.date.today().year}.")
        return year

    def clean_duration_months(self):
        months = self.cleaned_data["duration_months"]
        if months > MAX_DURATION_MONTHS:
            raise forms.ValidationError(f"Give the duration in months, at most {MAX_DURATION_MONTHS}.")
        return months

    @property
    def checklist_fields(self):
        return [self[f] for f, _ in MAJOR_FEATURES + MINOR_FEATURES]


class MoreImagesForm(forms.Form):
    images = MultipleImageField(label="Dermoscopic images", empty_message="Add at least one dermoscopic image.")
    note = forms.CharField(label="Note to the dermatologist", required=False, max_length=2000,
                           widget=forms.Textarea(attrs={"rows": 2}))


class AnswerForm(forms.ModelForm):
    class Meta:
        model = Answer
        fields = ["action", "message"]
        widgets = {"action": forms.RadioSelect, "message": forms.Textarea(attrs={"rows": 4})}
        help_texts = {"message": "The practice reads this: the plan, advice or what images to take. No AI figures "
                                 "are sent with it."}

    def clean_message(self):
        message = self.cleaned_data["message"].strip()
        if not message:
            raise forms.ValidationError("Write the message the practice will read.")
        return message
