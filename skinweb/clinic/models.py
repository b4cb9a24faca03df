import re
import uuid

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import formats, timezone
from django.utils.translation import gettext, gettext_noop, pgettext_lazy
from django.utils.translation import gettext_lazy as _

from skinweb.clinic import imagechecks

# ISIC Archive "anatom_site_general" vocabulary.
ANATOMIC_SITES = [
    ("anterior torso", _("Anterior torso")),
    ("posterior torso", _("Posterior torso")),
    ("lateral torso", _("Lateral torso")),
    ("head/neck", _("Head / neck")),
    ("upper extremity", _("Upper extremity")),
    ("lower extremity", _("Lower extremity")),
    ("palms/soles", _("Palms / soles")),
    ("oral/genital", _("Oral / genital")),
]

DIAGNOSES = [
    ("nevus", _("Nevus")),
    ("melanoma", _("Melanoma")),
    ("basal_cell_carcinoma", _("Basal cell carcinoma")),
    ("squamous_cell_carcinoma", _("Squamous cell carcinoma")),
    ("seborrheic_keratosis", _("Seborrheic keratosis")),
    ("actinic_keratosis", _("Actinic keratosis")),
    ("dermatofibroma", _("Dermatofibroma")),
    ("vascular_lesion", _("Vascular lesion")),
    ("other", _("Other")),
]
MALIGNANT_DIAGNOSES = {"melanoma", "basal_cell_carcinoma", "squamous_cell_carcinoma"}


class Label(models.TextChoices):
    BENIGN = "benign", _("Benign")
    MALIGNANT = "malignant", _("Malignant")


# The decision inside a sentence ("AI decision: benign"), in the reader's language.
DECISION_WORDS = {"benign": pgettext_lazy("decision", "benign"), "malignant": pgettext_lazy("decision", "malignant")}


NO_MODEL_MESSAGE = gettext_noop(
    "No model is published yet, so this image could not be classified. An administrator can train "
    "one with `python -m classifier.training.train --data DIR --out DIR` and publish it with "
    "`python manage.py publish_model FILE`; then press Retry."
)
# Why a classification failed: stored in English (Case.failure_reason), shown in the reader's language by
# failure_in_words; the details are the software's own words.
FAILURES = {
    "model": gettext_noop("The published model %(version)s could not be loaded: %(detail)s"),
    "read": gettext_noop("The stored image could not be read: %(detail)s"),
    "prepare": gettext_noop("The stored image could not be prepared (%(detail)s)."),
    "classify": gettext_noop("Classification failed (%(detail)s)."),
}


# Each failure template as a pattern that reads a stored reason back into its placeholders.
FAILURE_PATTERNS = [
    (template, re.compile(re.escape(template).replace(re.escape("%(version)s"), r"(?P<version>\S+)")
                          .replace(re.escape("%(detail)s"), r"(?P<detail>.*)"), re.S))
    for template in FAILURES.values()
]


def failure_in_words(reason: str) -> str:
    """A stored failure reason (FAILURES) in the active language."""
    if reason == NO_MODEL_MESSAGE:
        return gettext(NO_MODEL_MESSAGE)
    for template, pattern in FAILURE_PATTERNS:
        match = pattern.fullmatch(reason)
        if match:
            return gettext(template) % match.groupdict()
    return reason


class ClinicQuerySet(models.QuerySet):
    """Every clinical model's queryset narrows to what one user may see: their clinic's records."""

    clinic_path = "clinic"

    def visible_to(self, user):
        clinic_id = getattr(user, "clinic_id", None)
        if not user.is_authenticated or clinic_id is None:
            return self.none()
        return self.filter(**{f"{self.clinic_path}_id": clinic_id})


class Patient(models.Model):
    class Sex(models.TextChoices):
        FEMALE = "female", _("Female")
        MALE = "male", _("Male")
        OTHER = "other", pgettext_lazy("sex", "Other")
        UNKNOWN = "unknown", _("Unknown")

    clinic = models.ForeignKey("accounts.Clinic", on_delete=models.PROTECT, related_name="patients")
    identifier = models.CharField(
        _("identifier"), max_length=64, help_text=_("Pseudonymous identifier, unique in your clinic. No names.")
    )
    birth_year = models.PositiveSmallIntegerField(_("birth year"))
    sex = models.CharField(_("sex"), max_length=10, choices=Sex.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    objects = ClinicQuerySet.as_manager()

    class Meta:
        verbose_name = _("patient")
        verbose_name_plural = _("patients")
        ordering = ["identifier"]
        constraints = [models.UniqueConstraint(fields=["clinic", "identifier"], name="patient_identifier_per_clinic")]

    def __str__(self):
        return self.identifier

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        # Cases carry their clinic (the history's index); keep it in step if a patient is moved.
        Case.all_objects.filter(lesion__patient=self).exclude(clinic_id=self.clinic_id).update(clinic_id=self.clinic_id)


class LesionQuerySet(ClinicQuerySet):
    clinic_path = "patient__clinic"


class Lesion(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="lesions")
    site = models.CharField(_("anatomical site"), max_length=30, choices=ANATOMIC_SITES)
    label = models.CharField(_("label"), max_length=100, blank=True,
                             help_text=_("Optional, e.g. 'left scapula, 2 cm below mole'"))
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    objects = LesionQuerySet.as_manager()

    class Meta:
        verbose_name = _("lesion")
        verbose_name_plural = _("lesions")
        ordering = ["created_at"]

    def __str__(self):
        return f"{self.get_site_display()}{' – ' + self.label if self.label else ''}"

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        clinic_id = Patient.objects.filter(pk=self.patient_id).values_list("clinic_id", flat=True).first()
        Case.all_objects.filter(lesion=self).exclude(clinic_id=clinic_id).update(clinic_id=clinic_id)

    def add_image(self, user, original_name: str, image) -> "Case":
        """Store a normalised image (uploads.NormalisedImage) as a new case dated now.

        The file is written first; if the row cannot be saved the file is removed again, so
        there is never a row without a file, nor an orphan file.
        """
        case = Case(
            lesion=self,
            created_by=user,
            original_name=original_name[:255],
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            taken_at=getattr(image, "taken_at", None) or timezone.now(),
            image_warnings=list(getattr(image, "warnings", [])),
        )
        case.image.save(f"upload.{image.extension}", image.content, save=False)
        try:
            case.thumbnail.save("thumb.jpg", image.thumbnail, save=False)
            case.save()
        except BaseException:
            case.image.delete(save=False)
            if case.thumbnail:
                case.thumbnail.delete(save=False)
            raise
        return case


def case_image_name(instance, filename):
    """Server-generated name: nothing the user typed reaches the file system."""
    ext = filename.rsplit(".", 1)[-1].lower()
    return f"cases/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.{ext}"


def thumbnail_name(instance, filename):
    return f"thumbnails/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.jpg"


def heatmap_name(instance, filename):
    return f"heatmaps/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


class CaseQuerySet(ClinicQuerySet):
    # Denormalised from lesion.patient.clinic (kept in step by Case/Lesion/Patient.save): the
    # history filters and orders on one index instead of joining and sorting the clinic's cases.
    clinic_path = "clinic"

    def with_related(self):
        return self.select_related("lesion__patient", "prediction__model_version", "feedback")

    def awaiting_review(self):
        return self.filter(status=Case.Status.DONE, feedback__isnull=True)

    def by_risk(self):
        """Riskiest first, for worklists: malignant above the borderline band, then borderline, then results
        withheld (the image needs taking again), then benign; within each, the highest probability first, then
        the one waiting longest."""
        from django.db.models import Case as When_
        from django.db.models import F, IntegerField, Q, Value, When

        shown = Q(withheld_reason="") | Q(score_released_at__isnull=False)
        risk = When_(
            When(~shown & Q(status=Case.Status.DONE), then=Value(2)),
            When(prediction__probability__gte=F("prediction__band_high"), then=Value(0)),
            When(prediction__probability__gte=F("prediction__band_low"), then=Value(1)),
            When(prediction__isnull=False, then=Value(3)),
            default=Value(4), output_field=IntegerField(),
        )
        return self.annotate(risk=risk).order_by("risk", F("prediction__probability").desc(nulls_last=True),
                                                 "finished_at", "pk")

    def results_withheld(self):
        """Classified, but the image does not look like a lesion: no decision is shown (Case.result_withheld)."""
        return self.filter(status=Case.Status.DONE, score_released_at__isnull=True).exclude(withheld_reason="")

    def with_results_shown(self):
        """Classified with a decision to show: a lesion image, or one whose score a clinician asked for."""
        return self.filter(status=Case.Status.DONE).filter(
            models.Q(withheld_reason="") | models.Q(score_released_at__isnull=False))

    def disagreements(self):
        return self.filter(feedback__agrees_with_ai=False)

    def for_relabelling(self):
        """Cases an admin should give a ground truth: histopathology recorded, AI and clinician
        disagree, or flagged."""
        return self.filter(
            models.Q(feedback__histopathology_result__gt="") | models.Q(feedback__agrees_with_ai=False)
            | models.Q(flagged=True)
        )


class CaseManager(models.Manager.from_queryset(CaseQuerySet)):
    """The cases in use. An image removed by mistake (Case.remove) is kept but left out of every
    list, page, export, figure, queue and training set, because they all start here (related
    managers and prefetches too: this is the default manager). ``Case.all_objects`` sees it."""

    def get_queryset(self):
        return super().get_queryset().filter(removed_at__isnull=True)


class Case(models.Model):
    """One dermoscopic image of a lesion at one visit, its classification and the clinician's review."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    class TruthSource(models.TextChoices):
        HISTOPATHOLOGY = "histopathology", _("Histopathology")
        CONSENSUS = "consensus", _("Consensus")
        FOLLOW_UP = "follow_up", _("Clinical follow-up")

    lesion = models.ForeignKey(Lesion, on_delete=models.PROTECT, related_name="cases")
    clinic = models.ForeignKey("accounts.Clinic", on_delete=models.PROTECT, related_name="+", editable=False)
    image = models.FileField(upload_to=case_image_name)
    thumbnail = models.FileField(upload_to=thumbnail_name, blank=True, help_text="Made once, at upload")
    # The visit: images of one lesion taken on the same day belong to one visit (clinic.insights).
    image_warnings = models.JSONField(
        default=list, blank=True, help_text="What the image checks found (too dark, blurred…): shown with the result"
    )
    taken_at = models.DateTimeField(
        default=timezone.now, db_index=True,
        help_text="When the image was taken: the camera's EXIF date when it has one, else the upload; editable",
    )
    original_name = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    failure_reason = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True, help_text="host:pid of the worker classifying it")
    enqueued_at = models.DateTimeField(default=timezone.now, help_text="When its task was last sent to the broker")
    # The current prediction and feedback; earlier ones stay in their tables.
    prediction = models.ForeignKey(
        "Prediction", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    feedback = models.ForeignKey(
        "Feedback", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    # Ground truth for retraining, set by an administrator.
    truth_label = models.CharField(_("ground truth"), max_length=10, choices=Label.choices, blank=True)
    truth_source = models.CharField(max_length=20, choices=TruthSource.choices, blank=True)
    truth_set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    truth_set_at = models.DateTimeField(null=True, blank=True, editable=False)
    use_for_training = models.BooleanField(default=False)
    flagged = models.BooleanField(default=False, help_text="Sent to the relabel queue by a clinician or admin")

    # No decision on what is not a lesion image (issue 43): why the result is withheld ("" when it is shown),
    # set with the result from the image checks and the model's lesion check; a clinician may still ask for
    # the score, which is recorded here and in the audit trail, and marked on every output.
    withheld_reason = models.CharField(max_length=300, blank=True, editable=False)
    score_released_at = models.DateTimeField(null=True, blank=True, editable=False)
    score_released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    score_release_reason = models.CharField(max_length=500, blank=True, editable=False)

    # Removed by mistake: hidden everywhere, kept, restorable by the clinic's administrator.
    removed_at = models.DateTimeField(null=True, blank=True, db_index=True, editable=False)
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    removal_reason = models.CharField(max_length=500, blank=True, editable=False)

    objects = CaseManager()
    all_objects = CaseQuerySet.as_manager()

    class Meta:
        verbose_name = _("case")
        verbose_name_plural = _("cases")
        default_manager_name = "objects"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="case_status_created"),
            models.Index(fields=["clinic", "-created_at", "-id"], name="case_history"),
        ]

    def __str__(self):
        return f"Case {self.pk}"

    def save(self, *args, **kwargs):
        if self.clinic_id is None:
            self.clinic_id = self.lesion.patient.clinic_id
        super().save(*args, **kwargs)

    @property
    def patient(self):
        return self.lesion.patient

    @property
    def is_pending(self):
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def turnaround(self):
        """Upload to result, including time in the queue."""
        if self.finished_at:
            return self.finished_at - self.created_at
        return None

    # State changes are single UPDATEs on the row so a web request and a worker never overwrite
    # each other's fields. They reach removed images too: a result that arrives after a removal is
    # kept with the image, ready if it is restored.
    def mark_running(self, claimed_by=""):
        now = timezone.now()
        Case.all_objects.filter(pk=self.pk).update(
            status=self.Status.RUNNING, started_at=now, failure_reason="", attempts=models.F("attempts") + 1,
            claimed_by=claimed_by,
        )
        self.status, self.started_at, self.failure_reason, self.claimed_by = self.Status.RUNNING, now, "", claimed_by

    def mark_done(self, prediction):
        now = timezone.now()
        reasons = imagechecks.withholding(
            [*self.image_warnings, *([imagechecks.UNLIKE_LESION] if prediction.unlike_lesion else [])])
        withheld = "; ".join(reasons)[:300]
        Case.all_objects.filter(pk=self.pk).update(status=self.Status.DONE, prediction=prediction, finished_at=now,
                                                   withheld_reason=withheld)
        self.status, self.prediction, self.finished_at = self.Status.DONE, prediction, now
        self.withheld_reason = withheld
        self.refresh_referral()

    def refresh_referral(self):
        """The triage order of the referral this image came with, if any (skinweb.referrals, which builds on this
        module: looked up by name, not imported)."""
        referral = apps.get_model("referrals", "Referral").objects.filter(lesion_id=self.lesion_id).first()
        if referral is not None:
            referral.refresh_triage()

    @property
    def result_withheld(self) -> bool:
        """Classified, but no decision is shown: the image does not look like a dermoscopic lesion and no
        clinician has asked for its score."""
        return self.status == self.Status.DONE and bool(self.withheld_reason) and self.score_released_at is None

    @property
    def shown_prediction(self):
        """The prediction whose decision the pages, reports, exports and the API show; None while pending or
        failed, and when the result is withheld."""
        if self.status != self.Status.DONE or self.result_withheld:
            return None
        return self.prediction

    @property
    def score_released(self) -> bool:
        """The score of an image that does not look like a lesion, shown because a clinician asked for it."""
        return bool(self.withheld_reason) and self.score_released_at is not None

    def release_snapshot(self) -> dict:
        return {"withheld_reason": self.withheld_reason,
                "score_released_at": self.score_released_at.isoformat() if self.score_released_at else None,
                "score_release_reason": self.score_release_reason}

    def release_score(self, user, reason: str) -> tuple[dict, dict]:
        """Show the withheld score of this image, for the reason given; returns (old, new) for the audit."""
        reason = reason.strip()
        if not reason:
            raise ValidationError({"reason": _("Say why you need the score of an image that does not look like a "
                                               "dermoscopic lesion.")})
        if not self.result_withheld:
            raise ValidationError(_("This image's result is not withheld."))
        old = self.release_snapshot()
        self.score_released_at, self.score_released_by, self.score_release_reason = timezone.now(), user, reason
        Case.all_objects.filter(pk=self.pk).update(score_released_at=self.score_released_at, score_released_by=user,
                                                   score_release_reason=reason)
        self.refresh_referral()
        return old, self.release_snapshot()

    def mark_failed(self, reason: str):
        now = timezone.now()
        Case.all_objects.filter(pk=self.pk).update(status=self.Status.FAILED, failure_reason=reason, finished_at=now)
        self.status, self.failure_reason, self.finished_at = self.Status.FAILED, reason, now
        self.refresh_referral()

    def requeue(self):
        Case.all_objects.filter(pk=self.pk).update(
            status=self.Status.QUEUED, failure_reason="", started_at=None, finished_at=None, enqueued_at=timezone.now()
        )
        self.status, self.failure_reason = self.Status.QUEUED, ""

    def record_feedback(self, user, **fields) -> "Feedback":
        """Add a new revision of the clinician's feedback; earlier revisions are kept."""
        with transaction.atomic():
            # Lock the case row so two concurrent edits get distinct revision numbers.
            case = Case.objects.select_for_update().get(pk=self.pk)
            last = case.feedback_history.order_by("-revision").first()
            feedback = Feedback.objects.create(
                case=case, revision=(last.revision + 1 if last else 1), created_by=user, **fields
            )
            Case.objects.filter(pk=self.pk).update(feedback=feedback)
        self.feedback = feedback
        return feedback

    # Relabelling for retraining: every path (the relabel queue, the Django admin's form and actions)
    # goes through relabel(), which enforces the rules and returns old and new for the audit record.
    NEEDS_TRUTH = _("Only a case with a ground truth can be used for training.")

    @staticmethod
    def validate_truth(label: str, source: str, use_for_training: bool) -> None:
        if bool(label) != bool(source):
            raise ValidationError(_("Give both the ground truth and its source, or neither."))
        if use_for_training and not label:
            raise ValidationError({"use_for_training": Case.NEEDS_TRUTH})

    def truth_snapshot(self) -> dict:
        return {"truth_label": self.truth_label, "truth_source": self.truth_source,
                "use_for_training": self.use_for_training}

    def relabel(self, user, label: str, source: str, use_for_training: bool | None = None) -> tuple[dict, dict]:
        """Set the ground truth and its source (both, or neither) and, when given, whether the case
        teaches the model. Raises ValidationError (nothing saved) when the rules are broken; returns the
        (old, new) truth for the audit record."""
        use = self.use_for_training if use_for_training is None else use_for_training
        Case.validate_truth(label, source, use)
        old = self.truth_snapshot()
        if (label, source) != (self.truth_label, self.truth_source):
            self.truth_label, self.truth_source = label, source
            self.truth_set_by, self.truth_set_at = user, timezone.now()
        self.use_for_training = use
        self.save(update_fields=["truth_label", "truth_source", "truth_set_by", "truth_set_at", "use_for_training"])
        return old, self.truth_snapshot()

    def set_training(self, user, value: bool) -> tuple[dict, dict]:
        return self.relabel(user, self.truth_label, self.truth_source, value)

    @property
    def warnings(self) -> list[str]:
        """What to check before trusting the score: the upload's image checks and, with the result,
        the model's lesion check (shown with the result in the page, the lists, the PDF and the CSV)."""
        unlike = self.prediction_id is not None and self.prediction.unlike_lesion
        return [*self.image_warnings, *([imagechecks.UNLIKE_LESION] if unlike else [])]

    @property
    def warnings_shown(self) -> list[str]:
        """The warnings in the reader's language."""
        return [imagechecks.in_words(w) for w in self.warnings]

    @property
    def failure_reason_shown(self) -> str:
        """Why the classification failed, in the reader's language (the technical details as they came)."""
        return failure_in_words(self.failure_reason)

    @property
    def withheld_reason_shown(self) -> str:
        """Why the result is withheld, in the reader's language."""
        return imagechecks.in_words(self.withheld_reason) if self.withheld_reason else ""

    def removal_snapshot(self) -> dict:
        return {"removed": self.removed_at is not None, "reason": self.removal_reason}

    def remove(self, user, reason: str) -> tuple[dict, dict]:
        """Hide an image uploaded by mistake (with its predictions, heat maps and feedback) from
        everything but the administrators' list of removed images; returns (old, new) for the audit."""
        reason = reason.strip()
        if not reason:
            raise ValidationError({"reason": _("Say why the image is removed.")})
        old = self.removal_snapshot()
        self.removed_at, self.removed_by, self.removal_reason = timezone.now(), user, reason
        Case.all_objects.filter(pk=self.pk).update(removed_at=self.removed_at, removed_by=user, removal_reason=reason)
        return old, self.removal_snapshot()

    def restore(self) -> tuple[dict, dict]:
        """Bring a removed image back where it was; returns (old, new) for the audit."""
        old = self.removal_snapshot()
        self.removed_at, self.removed_by, self.removal_reason = None, None, ""
        Case.all_objects.filter(pk=self.pk).update(removed_at=None, removed_by=None, removal_reason="")
        return old, self.removal_snapshot()


class Prediction(models.Model):
    """What one model version said about one case. Read-only once written."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey("models_registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    probability = models.FloatField(help_text="Probability of malignancy")
    threshold = models.FloatField(help_text="Decision threshold the model version used")
    # The model version's borderline band around the threshold, as it was when this was written.
    band_low = models.FloatField(null=True, blank=True, help_text="Lower end of the borderline band")
    band_high = models.FloatField(null=True, blank=True, help_text="Upper end of the borderline band")
    decision = models.CharField(max_length=10, choices=Label.choices)
    elapsed_ms = models.FloatField(help_text="Model time: preprocessing and forward pass")
    device = models.CharField(max_length=20)
    runtime = models.CharField(max_length=20, blank=True,
                               help_text="What ran the model (classifier.predictor.RUNTIMES): torch, onnx-fp32, "
                               "onnx-int8, onnx-int8-recheck or torch-cuda-fp16/-bf16/-fp32")
    batch_size = models.PositiveIntegerField(default=1, help_text="Images classified in the same forward pass")
    # classifier.lesioncheck: how far the image is from the training images in the model's features,
    # and the version's cut-off above which it "does not look like a dermoscopic skin lesion".
    lesion_distance = models.FloatField(null=True, blank=True)
    lesion_cutoff = models.FloatField(null=True, blank=True)
    # How many of the 8 orientations were averaged: all of them, or fewer where the version's cascade
    # (classifier.cascade) decided early. Null for rows written before it was recorded.
    views = models.PositiveSmallIntegerField(null=True, blank=True,
                                             help_text="Orientations of the image the model averaged")
    # The image's embedding in this model version's feature space (the pooled trunk features averaged
    # over the same views, float16 little-endian; classifier.reference): similar confirmed lesions are
    # found with it, and a case with a confirmed truth joins its clinic's reference library by it.
    # Empty for rows written before it was kept, or by a runtime that gives no features.
    embedding = models.BinaryField(blank=True, default=b"", editable=False)
    # The differential diagnosis ({class: probability}, classifier.reference.DIFFERENTIAL), when the
    # model version has a differential head; {} otherwise.
    differential = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Grad-CAM of the evidence for the decision (transparent PNG the size of the image), computed by a
    # worker after the prediction is stored (skinweb.clinic.explanations).
    heatmap = models.FileField(upload_to=heatmap_name, blank=True)
    explained_at = models.DateTimeField(null=True, blank=True)
    explanation_error = models.TextField(blank=True)

    class Meta:
        verbose_name = _("prediction")
        verbose_name_plural = _("predictions")
        constraints = [models.UniqueConstraint(fields=["case", "model_version"], name="one_prediction_per_version")]

    def __str__(self):
        return f"{self.decision} ({self.probability:.2f}) by {self.model_version_id}"

    @property
    def unlike_lesion(self) -> bool:
        """The lesion check's warning (False when the version has no check)."""
        return None not in (self.lesion_distance, self.lesion_cutoff) and self.lesion_distance > self.lesion_cutoff

    @property
    def explanation_pending(self) -> bool:
        return not self.heatmap and not self.explanation_error

    @property
    def band(self) -> tuple[float, float]:
        """The borderline band: stored with the prediction, else the model version's (older rows)."""
        if self.band_low is not None and self.band_high is not None:
            return self.band_low, self.band_high
        low, high = self.model_version.operating_point["band"]
        return low, high

    @property
    def band_extent(self) -> tuple[float, float]:
        """(start, width) of the band in percent of the 0-1 scale, for the probability bar."""
        low, high = self.band
        return round(100 * low, 2), round(100 * (high - low), 2)

    @property
    def borderline(self) -> bool:
        """Close enough to the threshold that a modest change of operating point would flip it."""
        low, high = self.band
        return low <= self.probability < high

    @property
    def certainty(self) -> str:
        """"malignant", "benign" or "borderline": what the pages, the PDF and the CSV show first."""
        return "borderline" if self.borderline else self.decision

    @property
    def decision_display(self) -> str:
        """"benign" or "malignant" in the reader's language, for inside a sentence."""
        return str(DECISION_WORDS[self.decision])

    @property
    def certainty_display(self) -> str:
        """The first word of a result in a list: the decision, or "borderline (decision)"."""
        if self.borderline:
            return gettext("borderline (%(decision)s)") % {"decision": self.decision_display}
        return self.decision_display

    @property
    def summary(self) -> str:
        """One line for lists and exports, e.g. "borderline, leaning malignant: 0.26 (threshold 0.24)"."""
        values = {"decision": self.decision_display,
                  "probability": formats.number_format(round(self.probability, 2), 2),
                  "threshold": formats.number_format(round(self.threshold, 3), 3)}
        if self.borderline:
            return gettext("borderline, leaning %(decision)s: %(probability)s (threshold %(threshold)s)") % values
        return gettext("%(decision)s: %(probability)s (threshold %(threshold)s)") % values


class Feedback(models.Model):
    class Management(models.TextChoices):
        REASSURE = "reassure", _("Reassure")
        MONITOR = "monitor", _("Monitor")
        EXCISE = "excise", _("Excise")
        BIOPSY = "biopsy", _("Biopsy")
        REFER = "refer", _("Refer")

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="feedback_history")
    revision = models.PositiveIntegerField()
    # None: no AI decision was shown to agree with (the result was withheld: not a lesion image).
    agrees_with_ai = models.BooleanField(_("agrees with the AI"), null=True, blank=True)
    clinical_diagnosis = models.CharField(_("clinical diagnosis"), max_length=30, choices=DIAGNOSES)
    management = models.CharField(_("management"), max_length=10, choices=Management.choices)
    histopathology_result = models.CharField(_("histopathology result"), max_length=30, choices=DIAGNOSES, blank=True)
    histopathology_date = models.DateField(_("histopathology date"), null=True, blank=True)
    notes = models.TextField(_("notes"), blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        verbose_name = _("feedback")
        verbose_name_plural = _("feedback")
        ordering = ["-revision"]
        constraints = [models.UniqueConstraint(fields=["case", "revision"], name="feedback_revision_per_case")]

    def __str__(self):
        return f"Feedback r{self.revision} on case {self.case_id}"

    @property
    def agreement_display(self) -> str:
        """Whether the clinician agreed with the AI, in the reader's language."""
        if self.agrees_with_ai is None:
            return gettext("no AI decision shown")
        return gettext("yes") if self.agrees_with_ai else gettext("no")
