"""What the clinic home page and the lesion timeline compute: agreement between the AI, the
clinicians and histopathology per model version, and the probability trend of a lesion."""

import dataclasses
import datetime
import math

from django.db.models import Count, Q
from django.utils import timezone

from skinweb.clinic.models import MALIGNANT_DIAGNOSES

# A rise in probability between two visits worth a look: at least this much, or crossing the threshold.
RISE = 0.10


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion k/n (sound for small counts, unlike k/n ± 2 SE)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass
class Rate:
    k: int
    n: int

    @property
    def value(self):
        return self.k / self.n if self.n else None

    @property
    def ci(self):
        return wilson(self.k, self.n)


def agreement_by_version(cases) -> list[dict]:
    """Per model version (newest first), over the cases whose current prediction it made:

    - how many it classified, how many have clinician feedback and how often the clinician agreed;
    - on the cases confirmed by histopathology (recorded in the feedback): the AI's sensitivity and
      specificity at the version's threshold, and the clinicians' (their clinical diagnosis,
      malignant or not), each with its counts and a 95% interval.
    """
    malignant_truth = Q(feedback__histopathology_result__in=MALIGNANT_DIAGNOSES)
    benign_truth = Q(feedback__histopathology_result__gt="") & ~malignant_truth
    ai_malignant = Q(prediction__decision="malignant")
    doctor_malignant = Q(feedback__clinical_diagnosis__in=MALIGNANT_DIAGNOSES)
    rows = (
        # Results withheld (not a lesion image, score not asked for) made no decision to count.
        cases.filter(prediction__isnull=False).filter(Q(withheld_reason="") | Q(score_released_at__isnull=False))
        .values("prediction__model_version__version", "prediction__model_version__created_at")
        .annotate(
            n=Count("pk"),
            n_feedback=Count("pk", filter=Q(feedback__isnull=False)),
            n_agree=Count("pk", filter=Q(feedback__agrees_with_ai=True)),
            n_answered=Count("pk", filter=Q(feedback__agrees_with_ai__isnull=False)),
            pos=Count("pk", filter=malignant_truth),
            neg=Count("pk", filter=benign_truth),
            ai_tp=Count("pk", filter=malignant_truth & ai_malignant),
            ai_tn=Count("pk", filter=benign_truth & ~ai_malignant),
            dr_tp=Count("pk", filter=malignant_truth & doctor_malignant),
            dr_tn=Count("pk", filter=benign_truth & ~doctor_malignant),
        )
        .order_by("-prediction__model_version__created_at")
    )
    return [
        {
            "version": r["prediction__model_version__version"],
            "classified": r["n"],
            "feedback": r["n_feedback"],
            "clinician_agrees": Rate(r["n_agree"], r["n_answered"]),
            "confirmed_malignant": r["pos"],
            "confirmed_benign": r["neg"],
            "ai_sensitivity": Rate(r["ai_tp"], r["pos"]),
            "ai_specificity": Rate(r["ai_tn"], r["neg"]),
            "clinician_sensitivity": Rate(r["dr_tp"], r["pos"]),
            "clinician_specificity": Rate(r["dr_tn"], r["neg"]),
        }
        for r in rows
    ]


@dataclasses.dataclass
class Visit:
    """The images of one lesion taken on one day. A visit with several images is summarised by its
    highest probability (the image that worries most), with that image's threshold."""

    date: datetime.date
    cases: list
    probability: float | None = None
    threshold: float | None = None
    rise: float | None = None  # change from the previous visit with a result, when it is a rise to flag
    x: float = 0.0  # chart coordinates (viewBox units)
    y: float = 0.0

    @property
    def case(self):
        """The case that summarises the visit (highest probability; else the first image)."""
        scored = [c for c in self.cases if c.shown_prediction]
        return max(scored, key=lambda c: c.shown_prediction.probability) if scored else self.cases[0]


def visits_of(cases) -> list[Visit]:
    """Cases grouped by the local date they were taken on, in date order."""
    by_day: dict[datetime.date, list] = {}
    for c in sorted(cases, key=lambda c: (c.taken_at, c.pk)):
        by_day.setdefault(timezone.localdate(c.taken_at), []).append(c)
    visits = []
    for day, day_cases in by_day.items():
        v = Visit(day, day_cases)
        if v.case.shown_prediction:
            v.probability, v.threshold = v.case.shown_prediction.probability, v.case.shown_prediction.threshold
        visits.append(v)
    return visits


def timeline(cases, width: float = 600, height: float = 160, pad: float = 36) -> dict:
    """The lesion's visits in date order, with chart coordinates for their probabilities and the
    rises to flag (an increase of at least RISE since the previous visit's result, or one that
    crosses the threshold from below). Images of the same visit are never compared with each other."""
    visits = visits_of(cases)
    points = [v for v in visits if v.probability is not None]
    previous = None
    for v in points:
        if previous is not None:
            delta = v.probability - previous.probability
            crossed = previous.probability < v.threshold <= v.probability
            if delta >= RISE or (delta > 0 and crossed):
                v.rise = delta
        previous = v
    span = max(len(points) - 1, 1)
    for i, v in enumerate(points):
        v.x = pad + (width - 2 * pad) * (i / span if len(points) > 1 else 0.5)
        v.y = pad + (height - 2 * pad) * (1 - v.probability)
    threshold = points[-1].threshold if points else None
    return {
        "visits": visits,
        "pending": any(c.is_pending for v in visits for c in v.cases),  # the page polls until they are done
        "points": points,
        "polyline": " ".join(f"{v.x:.1f},{v.y:.1f}" for v in points),
        "threshold_y": pad + (height - 2 * pad) * (1 - threshold) if threshold is not None else None,
        "rises": [v for v in points if v.rise is not None],
        "width": width,
        "height": height,
        "pad": pad,
        "top": pad,
        "bottom": height - pad,
        "right": width - pad,
    }
