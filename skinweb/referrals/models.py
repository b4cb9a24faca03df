"""Referring practices and their referrals.

A practice is linked to clinics by their administrators; its users (the referrer role: ``User.practice``, no
clinic) send referrals to a linked clinic and see only their practice's referrals and the answers. A referral's
images are the receiving clinic's records from the start: the patient (the practice's identifier, prefixed with
the practice's code), a lesion and one case per dermoscopic image, classified as any upload is. So nothing is
copied when the dermatologist accepts it: the referral links to its lesion.

The triage order (``Referral.objects.triage_order``) is kept in columns (``ai_tier``, ``ai_probability``,
``checklist_score``) refreshed whenever one of its images is classified, so the worklist is one indexed query
however many referrals are open.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from skinweb.clinic.models import ANATOMIC_SITES, Patient


class Practice(models.Model):
    name = models.CharField(max_length=200, unique=True)
    code = models.SlugField(
        max_length=20, unique=True,
        help_text=_("Short code (letters, digits, hyphens); it prefixes the practice's patient identifiers in a "
                    "clinic"))
    email = models.EmailField(blank=True, help_text=_("Told when a referral is answered (a link, no patient details)"))
    clinics = models.ManyToManyField("accounts.Clinic", related_name="practices", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("practice")
        verbose_name_plural = _("practices")
        ordering = ["name"]

    def __str__(self):
        return self.name


# The weighted 7-point checklist (NICE NG12): three major features, two points each; four minor, one each.
# A score of 3 or more is the usual threshold for an urgent suspected-cancer referral.
MAJOR_FEATURES = [("changed_size", _("Change in size")), ("changed_shape", _("Irregular shape or change in shape")),
                  ("changed_colour", _("Irregular colour or change in colour"))]
MINOR_FEATURES = [("diameter_7mm", _("Largest diameter 7 mm or more")), ("inflammation", _("Inflammation")),
                  ("crusting_or_bleeding", _("Oozing, crusting or bleeding")),
                  ("changed_sensation", _("Change in sensation (itch, pain)"))]
URGENT_CHECKLIST_SCORE = 3


def ai_tier(probability: float | None, band_low: float, band_high: float) -> int:
    """The AI's tier of one image (Referral.Tier): malignant above the borderline band, borderline inside it,
    benign below; no probability to show (queued, failed, withheld) is NO_RESULT. A referral's tier is the highest
    of its images'. As the clinic's worklists (CaseQuerySet.by_risk)."""
    if probability is None:
        return Referral.Tier.NO_RESULT
    if probability >= band_high:
        return Referral.Tier.MALIGNANT
    if probability >= band_low:
        return Referral.Tier.BORDERLINE
    return Referral.Tier.BENIGN


def triage_key(tier: int, checklist_score: int, probability: float | None, created_at) -> tuple:
    """The sort key of ``Referral.objects.triage_order`` (ascending), for code that orders referrals outside the
    database (benchmarks.referrals)."""
    return (-tier, -checklist_score, -(probability if probability is not None else float("-inf")), created_at)


class ReferralQuerySet(models.QuerySet):
    def visible_to(self, user):
        """A clinic's members: the referrals sent to their clinic; a referrer: their practice's."""
        if not user.is_authenticated:
            return self.none()
        if getattr(user, "clinic_id", None) is not None:
            return self.filter(clinic_id=user.clinic_id)
        if getattr(user, "practice_id", None) is not None:
            return self.filter(practice_id=user.practice_id)
        return self.none()

    def open(self):
        return self.filter(status__in=Referral.OPEN_STATUSES)

    def triage_order(self):
        """Riskiest first: the AI's decision and band, then the checklist, then the probability, then the longest
        waiting."""
        return self.order_by("-ai_tier", "-checklist_score", models.F("ai_probability").desc(nulls_last=True),
                             "created_at", "pk")


class Referral(models.Model):
    class Urgency(models.TextChoices):
        URGENT = "urgent", _("Urgent (suspected skin cancer)")
        ROUTINE = "routine", _("Routine")

    class Status(models.TextChoices):
        OPEN = "open", _("Waiting for review")
        MORE_IMAGES = "more_images", _("Better images asked for")
        BOOKED_URGENT = "booked_urgent", _("Booked: urgent appointment")
        BOOKED_ROUTINE = "booked_routine", _("Booked: routine appointment")
        RETURNED = "returned", _("Returned with advice")

    class Tier(models.IntegerChoices):
        """The AI's part of the triage order (the highest of the referral's images): malignant above the borderline
        band, borderline, no result to show (queued, failed, or withheld as not a lesion image), benign."""
        BENIGN = 0, "benign"
        NO_RESULT = 1, "no AI result yet"  # queued, failed or withheld: a person has to look
        BORDERLINE = 2, "borderline"
        MALIGNANT = 3, "malignant"

    OPEN_STATUSES = (Status.OPEN, Status.MORE_IMAGES)

    practice = models.ForeignKey(Practice, on_delete=models.PROTECT, related_name="referrals")
    clinic = models.ForeignKey("accounts.Clinic", on_delete=models.PROTECT, related_name="referrals")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    patient_identifier = models.CharField(
        _("the practice's patient identifier"), max_length=40,
        help_text=_("Pseudonymous, as the practice keeps it. No names."))
    birth_year = models.PositiveSmallIntegerField(_("birth year"))
    sex = models.CharField(_("sex"), max_length=10, choices=Patient.Sex.choices)
    site = models.CharField(_("anatomical site"), max_length=30, choices=ANATOMIC_SITES)
    changed_size = models.BooleanField(default=False)
    changed_shape = models.BooleanField(default=False)
    changed_colour = models.BooleanField(default=False)
    diameter_7mm = models.BooleanField(default=False)
    inflammation = models.BooleanField(default=False)
    crusting_or_bleeding = models.BooleanField(default=False)
    changed_sensation = models.BooleanField(default=False)
    duration_months = models.PositiveSmallIntegerField(_("noticed for (months)"))
    history = models.TextField(_("history"), blank=True, max_length=4000)
    urgency = models.CharField(_("urgency asked for"), max_length=10, choices=Urgency.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    lesion = models.OneToOneField("clinic.Lesion", on_delete=models.PROTECT, related_name="referral")
    overview = models.FileField(upload_to="referrals/%Y/%m/", blank=True,
                                help_text=_("A clinical overview photograph (not classified)"))
    checklist_score = models.PositiveSmallIntegerField(default=0, editable=False)
    ai_tier = models.PositiveSmallIntegerField(choices=Tier.choices, default=Tier.NO_RESULT, editable=False)
    ai_probability = models.FloatField(null=True, blank=True, editable=False)
    answered_at = models.DateTimeField(null=True, blank=True)

    objects = ReferralQuerySet.as_manager()

    class Meta:
        verbose_name = _("referral")
        verbose_name_plural = _("referrals")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["clinic", "status", "-ai_tier", "-checklist_score", "-ai_probability",
                                        "created_at"], name="referral_triage")]

    def __str__(self):
        return f"Referral {self.pk} from {self.practice}"

    @staticmethod
    def score(values: dict) -> int:
        return sum(2 for f, _ in MAJOR_FEATURES if values.get(f)) + sum(1 for f, _ in MINOR_FEATURES if values.get(f))

    def save(self, *args, **kwargs):
        self.checklist_score = self.score({f: getattr(self, f) for f, _ in MAJOR_FEATURES + MINOR_FEATURES})
        super().save(*args, **kwargs)

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN_STATUSES

    @property
    def checklist(self) -> list[tuple[str, bool, int]]:
        return [(label, getattr(self, f), 2) for f, label in MAJOR_FEATURES] + \
            [(label, getattr(self, f), 1) for f, label in MINOR_FEATURES]

    def waited(self, now=None):
        return (now or timezone.now()) - self.created_at

    def refresh_triage(self) -> None:
        """Recompute the AI's part of the order from the referral's images (each shown result, withheld or not)."""
        tier, top = self.Tier.BENIGN, None
        cases = list(self.lesion.cases.select_related("prediction"))
        if not cases:
            tier = self.Tier.NO_RESULT
        for case in cases:
            shown = case.shown_prediction
            if shown is None:
                tier = max(tier, self.Tier.NO_RESULT)
                continue
            top = shown.probability if top is None else max(top, shown.probability)
            tier = max(tier, ai_tier(shown.probability, *shown.band))
        Referral.objects.filter(pk=self.pk).update(ai_tier=int(tier), ai_probability=top)
        self.ai_tier, self.ai_probability = int(tier), top


class Answer(models.Model):
    """The dermatologist's action on a referral, with the message the practice reads. Never the AI's."""

    class Action(models.TextChoices):
        BOOK_URGENT = "book_urgent", _("Book an urgent appointment")
        BOOK_ROUTINE = "book_routine", _("Book a routine appointment")
        RETURN = "return", _("Return to the practice with advice")
        MORE_IMAGES = "more_images", _("Ask for better images")

    STATUS_AFTER = {Action.BOOK_URGENT: Referral.Status.BOOKED_URGENT,
                    Action.BOOK_ROUTINE: Referral.Status.BOOKED_ROUTINE,
                    Action.RETURN: Referral.Status.RETURNED, Action.MORE_IMAGES: Referral.Status.MORE_IMAGES}

    referral = models.ForeignKey(Referral, on_delete=models.CASCADE, related_name="answers")
    action = models.CharField(_("action"), max_length=20, choices=Action.choices)
    message = models.TextField(_("message to the practice"), max_length=4000)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        verbose_name = _("answer")
        verbose_name_plural = _("answers")
        ordering = ["-created_at"]
