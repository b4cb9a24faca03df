"""What the API reads and writes. The rules are the pages' own: a patient, a lesion or a feedback is
checked by the form the page uses (skinweb.clinic.forms), so the two can never disagree."""

from django.urls import reverse
from rest_framework import serializers

from skinweb.api.models import ApiToken
from skinweb.clinic.forms import FeedbackForm, PatientForm
from skinweb.clinic.models import ANATOMIC_SITES, Case, Feedback, Label, Lesion, Patient
from skinweb.clinic.similar import differential_probabilities

# The largest row ID (BigAutoField): a larger number names no record, and must not reach the database,
# which cannot even compare it (SQLite raises, PostgreSQL's bigint overflows).
MAX_ID = 2**63 - 1


def form_checked(form, fields):
    """``form``'s cleaned data for ``fields``, or the form's messages as the API's 400 answer."""
    if not form.is_valid():
        raise serializers.ValidationError({k: [str(m) for m in v] for k, v in form.errors.items()})
    return {name: form.cleaned_data.get(name) for name in fields}


class PatientSerializer(serializers.ModelSerializer):
    lesions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Patient
        fields = ["id", "identifier", "birth_year", "sex", "created_at", "lesions"]
        read_only_fields = ["created_at"]
        # The clinic's uniqueness rule is PatientForm's (case-insensitive), checked in validate().
        validators = []

    def validate(self, attrs):
        fields = PatientForm.Meta.fields
        data = {f: attrs[f] if f in attrs else getattr(self.instance, f, None) for f in fields}
        clinic = self.instance.clinic if self.instance else self.context["request"].user.clinic
        return form_checked(PatientForm(data, instance=self.instance, clinic=clinic), fields)


class ScopedPatientField(serializers.PrimaryKeyRelatedField):
    """A patient of the caller's clinic; another clinic's and a missing one read the same."""

    def get_queryset(self):
        return Patient.objects.visible_to(self.context["request"].user)


class LesionSerializer(serializers.ModelSerializer):
    patient = ScopedPatientField()
    cases = serializers.SerializerMethodField()

    class Meta:
        model = Lesion
        fields = ["id", "patient", "site", "label", "created_at", "cases"]
        read_only_fields = ["created_at"]

    def get_cases(self, lesion) -> list[int]:
        return [c.pk for c in lesion.cases.all()]

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None and not isinstance(self.instance, (list, tuple)):
            fields["patient"].read_only = True  # a lesion stays with its patient (move images instead)
        return fields


class PredictionSerializer(serializers.Serializer):
    probability = serializers.FloatField(help_text="Probability of malignancy")
    threshold = serializers.FloatField(help_text="The decision threshold the model version used")
    decision = serializers.ChoiceField(choices=Label.choices, help_text="At the threshold")
    band = serializers.SerializerMethodField(help_text="The borderline band [low, high)")
    certainty = serializers.CharField(help_text="malignant, benign or borderline")
    model_version = serializers.CharField(source="model_version.version")
    weights_sha256 = serializers.CharField(source="model_version.weights_sha256",
                                           help_text="sha256 of the weights' model file the version uses")
    model_sha256 = serializers.CharField(source="model_version.sha256",
                                         help_text="sha256 of the version's model file (weights and operating point)")
    sensitivity_statement = serializers.CharField(
        source="model_version.threshold_in_words",
        help_text="What the threshold means: the lower end of its held-out sensitivity interval, where measured")
    runtime = serializers.CharField()
    views = serializers.IntegerField(allow_null=True, help_text="Orientations of the image averaged")
    unlike_lesion = serializers.BooleanField(help_text="The lesion check's warning")
    differential = serializers.SerializerMethodField(help_text="{diagnosis: probability}, when the version has one")
    heatmap = serializers.SerializerMethodField(help_text="URL of the Grad-CAM overlay, once made")
    created_at = serializers.DateTimeField()

    def get_band(self, prediction) -> list[float]:
        return list(prediction.band)

    def get_differential(self, prediction) -> dict[str, float] | None:
        return differential_probabilities(prediction)

    def get_heatmap(self, prediction) -> str | None:
        return reverse("api:case-heatmap", args=[prediction.case_id]) if prediction.heatmap else None


class FeedbackSerializer(serializers.ModelSerializer):
    """A clinician's feedback; each POST adds a revision, earlier ones are kept."""

    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)

    class Meta:
        model = Feedback
        fields = ["revision", "agrees_with_ai", "clinical_diagnosis", "management", "histopathology_result",
                  "histopathology_date", "notes", "created_at", "created_by"]
        read_only_fields = ["revision", "created_at"]

    def validate(self, attrs):
        case = self.context.get("case")
        data = dict(attrs)
        if attrs.get("agrees_with_ai") is not None:
            data["agrees_with_ai"] = "yes" if attrs["agrees_with_ai"] else "no"
        return form_checked(FeedbackForm(data, case=case), FeedbackForm.Meta.fields)


class TruthSerializer(serializers.Serializer):
    """The ground truth (administrators): both the label and its source, or neither to withdraw it."""

    label = serializers.ChoiceField(choices=[("", "none"), *Label.choices], allow_blank=True)
    source = serializers.ChoiceField(choices=[("", "none"), *Case.TruthSource.choices], allow_blank=True)
    use_for_training = serializers.BooleanField(required=False)


class TruthReadSerializer(serializers.Serializer):
    label = serializers.CharField(source="truth_label")
    source = serializers.CharField(source="truth_source")
    use_for_training = serializers.BooleanField()
    set_at = serializers.DateTimeField(source="truth_set_at", allow_null=True)


class CaseSerializer(serializers.ModelSerializer):
    """One image of a lesion at a visit: its status, its result once classified, the current feedback."""

    patient = serializers.IntegerField(source="lesion.patient_id", read_only=True)
    patient_identifier = serializers.CharField(source="lesion.patient.identifier", read_only=True)
    warnings = serializers.ListField(child=serializers.CharField(), read_only=True)
    result = PredictionSerializer(source="shown_prediction", read_only=True, allow_null=True,
                                  help_text="null while pending or failed, and when withheld (result_withheld)")
    result_withheld = serializers.SerializerMethodField(
        help_text="Why no result is given ('' when one is): the image does not look like a dermoscopic lesion")
    score_released = serializers.BooleanField(
        read_only=True, help_text="The result is shown although withheld, because a clinician asked for it")
    feedback = FeedbackSerializer(read_only=True, allow_null=True)
    truth = TruthReadSerializer(source="*", read_only=True)
    links = serializers.SerializerMethodField()

    class Meta:
        model = Case
        fields = ["id", "lesion", "patient", "patient_identifier", "status", "failure_reason", "taken_at",
                  "created_at", "finished_at", "original_name", "width", "height", "warnings", "result",
                  "result_withheld", "score_released", "feedback", "truth", "flagged", "links"]
        read_only_fields = fields

    def get_result_withheld(self, case) -> str:
        return case.withheld_reason if case.result_withheld else ""

    def get_links(self, case) -> dict[str, str]:
        return {"self": reverse("api:case-detail", args=[case.pk]),
                "image": reverse("api:case-image", args=[case.pk]),
                "report": reverse("api:case-report", args=[case.pk]),
                "page": reverse("clinic:case_detail", args=[case.pk])}


class UploadSerializer(serializers.Serializer):
    # Each file gets its own verdict from the upload checks (an empty one too), as on the page.
    images = serializers.ListField(child=serializers.FileField(allow_empty_file=True), allow_empty=False,
                                   help_text="JPEG or PNG dermoscopic images, checked as the web form checks them")


class DicomImportSerializer(serializers.Serializer):
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), allow_empty=False,
                                  help_text="DICOM Part 10 files (VL Photographic, Dermoscopic Photography, "
                                            "Secondary Capture), one image each")
    site = serializers.ChoiceField(choices=ANATOMIC_SITES, required=False,
                                   help_text="The lesion site (default: each file's anatomic region)")
    lesion = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID,
                                      help_text="Add the images to this lesion of your clinic (its patient's files)")


class RejectedSerializer(serializers.Serializer):
    name = serializers.CharField()
    error = serializers.CharField()


class UploadResultSerializer(serializers.Serializer):
    cases = CaseSerializer(many=True, help_text="One case per accepted image, queued for classification")
    rejected = RejectedSerializer(many=True, help_text="Images refused, each with the reason; nothing stored")


class VisitSerializer(serializers.Serializer):
    """The images of one lesion taken on one day, summarised by the most worrying one."""

    date = serializers.DateField()
    probability = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    case = serializers.IntegerField(source="case.pk", help_text="The case that summarises the visit")
    cases = CaseSerializer(many=True)


class PatientFilters(serializers.Serializer):
    identifier = serializers.CharField(required=False, max_length=64, help_text="Contains (any case)")


class LesionFilters(serializers.Serializer):
    patient = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)


class CaseFilters(serializers.Serializer):
    """The case history's filters (the page's, same meaning); unlike the page, a wrong value is a 400."""

    status = serializers.ChoiceField(choices=Case.Status.choices, required=False)
    decision = serializers.ChoiceField(choices=Label.choices, required=False, help_text="The AI's")
    feedback = serializers.ChoiceField(choices=["given", "missing"], required=False)
    patient = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    lesion = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)


class VisitQuery(serializers.Serializer):
    date = serializers.DateField(help_text="The day the visit's images were taken (YYYY-MM-DD)")


class TokenSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["token_key", "name", "user", "created", "expiry", "last_used_at"]
        read_only_fields = fields



# Referrals (skinweb.referrals) --------------------------------------------------------------------------------

class ReferralAnswerSerializer(serializers.Serializer):
    action = serializers.CharField()
    action_display = serializers.CharField(source="get_action_display")
    message = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)


class ReferralSerializer(serializers.Serializer):
    """A referral as its practice sees it; the receiving clinic's members also get the AI's part of the triage
    order and the clinic's case of each image."""

    id = serializers.IntegerField()
    practice = serializers.CharField(source="practice.name")
    clinic = serializers.CharField(source="clinic.name")
    created_at = serializers.DateTimeField()
    patient_identifier = serializers.CharField()
    birth_year = serializers.IntegerField()
    sex = serializers.CharField()
    site = serializers.CharField()
    checklist = serializers.SerializerMethodField()
    checklist_score = serializers.IntegerField()
    duration_months = serializers.IntegerField()
    history = serializers.CharField()
    urgency = serializers.CharField()
    status = serializers.CharField()
    status_display = serializers.CharField(source="get_status_display")
    answered_at = serializers.DateTimeField(allow_null=True)
    images = serializers.SerializerMethodField()
    answers = ReferralAnswerSerializer(many=True)
    triage = serializers.SerializerMethodField()

    def get_checklist(self, referral) -> dict:
        from skinweb.referrals.models import MAJOR_FEATURES, MINOR_FEATURES

        return {field: getattr(referral, field) for field, _ in MAJOR_FEATURES + MINOR_FEATURES}

    def _clinic_view(self) -> bool:
        request = self.context.get("request")
        return request is not None and getattr(request.user, "clinic_id", None) is not None

    def get_images(self, referral) -> list[dict]:
        out = []
        for case in sorted(referral.lesion.cases.all(), key=lambda c: (c.created_at, c.pk)):  # prefetched in lists
            item = {"url": reverse("referrals:image", args=[referral.pk, case.pk])}
            if self._clinic_view():
                item["case"] = case.pk
            out.append(item)
        return out

    def get_triage(self, referral) -> dict | None:
        """The clinic's members only: the AI's tier over the images, the highest probability shown."""
        if not self._clinic_view():
            return None
        return {"ai_tier": referral.get_ai_tier_display(), "ai_probability": referral.ai_probability}


class ReferralAnswerInputSerializer(serializers.Serializer):
    action = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
