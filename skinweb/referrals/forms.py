import datetime

from django import forms
from django.contrib.auth import password_validation
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from skinweb.accounts.models import Clinic, User
from skinweb.clinic.forms import MultipleImageField
from skinweb.referrals.models import MAJOR_FEATURES, MINOR_FEATURES, Answer, Practice, Referral

MAX_DURATION_MONTHS = 1200


class ReferralForm(forms.ModelForm):
    """A practice's referral: the patient as the practice knows them, the lesion, the weighted 7-point checklist,
    the images. The images are checked by the view (each as an upload is); the rest here."""

    clinic = forms.ModelChoiceField(queryset=None, label=_("Send to"), empty_label=None)
    images = MultipleImageField(label=_("Dermoscopic images"),
                                help_text=_("One or more, JPEG or PNG, taken with a dermatoscope"),
                                empty_message=_("Add at least one dermoscopic image of the lesion."))
    overview = forms.FileField(label=_("Clinical overview photograph (optional)"), required=False,
                               help_text=_("Where the lesion is on the body; not classified"),
                               widget=forms.ClearableFileInput(attrs={"accept": "image/jpeg,image/png"}))

    class Meta:
        model = Referral
        fields = ["clinic", "patient_identifier", "birth_year", "sex", "site",
                  *[f for f, _ in MAJOR_FEATURES], *[f for f, _ in MINOR_FEATURES], "duration_months", "history",
                  "urgency"]
        labels = dict(MAJOR_FEATURES + MINOR_FEATURES)
        widgets = {"history": forms.Textarea(attrs={"rows": 3}), "urgency": forms.RadioSelect}
        help_texts = {"history": _("What the patient reports, relevant history. No names or contact details.")}

    def __init__(self, *args, practice, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["clinic"].queryset = practice.clinics.order_by("name")
        self.fields["urgency"].choices = list(Referral.Urgency.choices)  # radio buttons: no empty choice
        self.fields["duration_months"].widget.attrs.update({"min": 0, "max": MAX_DURATION_MONTHS})

    def clean_patient_identifier(self):
        value = self.cleaned_data["patient_identifier"].strip()
        if not value:
            raise forms.ValidationError(_("Give the practice's identifier of the patient."))
        return value

    def clean_birth_year(self):
        year = self.cleaned_data["birth_year"]
        if not 1900 <= year <= datetime.date.today().year:
            raise forms.ValidationError(gettext("Enter a year between 1900 and %(year)s.")
                                        % {"year": datetime.date.today().year})
        return year

    def clean_duration_months(self):
        months = self.cleaned_data["duration_months"]
        if months > MAX_DURATION_MONTHS:
            raise forms.ValidationError(gettext("Give the duration in months, at most %(max)s.")
                                        % {"max": MAX_DURATION_MONTHS})
        return months

    @property
    def checklist_fields(self):
        return [self[f] for f, _ in MAJOR_FEATURES + MINOR_FEATURES]


class MoreImagesForm(forms.Form):
    images = MultipleImageField(label=_("Dermoscopic images"), empty_message=_("Add at least one dermoscopic image."))
    note = forms.CharField(label=_("Note to the dermatologist"), required=False, max_length=2000,
                           widget=forms.Textarea(attrs={"rows": 2}))


class AnswerForm(forms.ModelForm):
    class Meta:
        model = Answer
        fields = ["action", "message"]
        widgets = {"action": forms.RadioSelect, "message": forms.Textarea(attrs={"rows": 4})}
        help_texts = {"message": _("The practice reads this: the plan, advice or what images to take. No AI figures "
                                 "are sent with it.")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = list(Answer.Action.choices)  # radio buttons: no empty choice

    def clean_message(self):
        message = self.cleaned_data["message"].strip()
        if not message:
            raise forms.ValidationError(_("Write the message the practice will read."))
        return message


class LinkPracticeForm(forms.Form):
    """Link a practice to the administrator's clinic: an existing one by its code, or a new one (name too)."""

    code = forms.SlugField(max_length=20, label=_("Practice code"), help_text=_("The practice's short code (letters, "
                           "digits, hyphens). An existing practice is linked; a new code makes a new practice."))
    name = forms.CharField(max_length=200, required=False, label=_("Practice name (a new practice)"))
    email = forms.EmailField(required=False, label=_("Address for answers (a new practice)"))

    def clean(self):
        data = super().clean()
        code = data.get("code")
        if code and not Practice.objects.filter(code__iexact=code).exists():
            name = (data.get("name") or "").strip()
            if not name:
                self.add_error("name", _("No practice has this code: give the new practice's name."))
            elif Practice.objects.filter(name__iexact=name).exists():
                self.add_error("name", _("A practice of this name exists with another code: link it by its code."))
        return data


class ReferrerAccountForm(forms.Form):
    """A referrer's account for one of the practices linked to the clinic."""

    practice = forms.ModelChoiceField(queryset=None, empty_label=None)
    username = forms.CharField(max_length=150)
    email = forms.EmailField(help_text=_("Told when the practice's referrals are answered"))
    password = forms.CharField(widget=forms.PasswordInput, help_text=_("Their password, handed to them as your "
                               "clinic hands out its own"))

    def __init__(self, *args, clinic, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["practice"].queryset = clinic.practices.order_by("name")

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        if User.objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(_("This username is taken."))
        return username

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("username"):
            try:
                password_validation.validate_password(data["password"], User(username=data["username"],
                                                                              email=data.get("email", "")))
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return data


class TargetsForm(forms.ModelForm):
    """The clinic's target waits, past which a referral is marked in the triage list."""

    class Meta:
        model = Clinic
        fields = ["referral_target_urgent_days", "referral_target_routine_days"]
        labels = {"referral_target_urgent_days": _("Urgent referrals (days)"),
                  "referral_target_routine_days": _("Routine referrals (days)")}

    def clean(self):
        data = super().clean()
        for name in self.Meta.fields:
            if data.get(name) is not None and not 1 <= data[name] <= 365:
                self.add_error(name, _("Between 1 and 365 days."))
        return data
