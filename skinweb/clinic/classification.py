"""Django adapter to the classifier: classify one case with the published model version.

Runs in Celery workers (tasks.py) but is a plain function, testable without Celery.
"""

import logging
import threading

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError

from classifier import ModelFileError, Predictor
from skinweb.clinic.models import Case, Prediction
from skinweb.models_registry.models import ModelVersion

log = logging.getLogger(__name__)

NO_MODEL_MESSAGE = (
    "No model is published yet, so this image could not be classified. An administrator can train "
    "one with `python -m classifier.train --data DIR --out DIR` and publish it with "
    "`python manage.py publish_model FILE`; then press Retry."
)

# One loaded model per worker process and device. Loading happens on first use, never at import:
# the prefork pool forks after import, and CUDA state must not cross a fork.
_predictors: dict[tuple[str, str], Predictor] = {}
_lock = threading.Lock()


def get_predictor(version: ModelVersion) -> Predictor:
    key = (version.version, settings.INFERENCE_DEVICE)
    with _lock:
        if key not in _predictors:
            # A newly published version replaces the cached one: keep only the current model in memory.
            _predictors.clear()
            log.info("loading model %s on %s", version.version, settings.INFERENCE_DEVICE)
            _predictors[key] = Predictor.from_file(version.path, device=settings.INFERENCE_DEVICE)
        return _predictors[key]


def classify_case(case_id: int) -> Case | None:
    """Classify a case with the published model, store the prediction and set the case's status.

    Idempotent: a case already classified by the published version is left as it is, so a task
    delivered twice (acks_late after a worker died) does no harm. Every failure ends as a
    readable reason on the case, never as a case stuck in "running".
    """
    case = Case.objects.filter(pk=case_id).select_related("prediction").first()
    if case is None:
        log.warning("case %s no longer exists", case_id)
        return None
    version = ModelVersion.objects.published()
    if version is None:
        case.mark_failed(NO_MODEL_MESSAGE)
        return case
    if case.status == Case.Status.DONE and case.prediction and case.prediction.model_version_id == version.pk:
        return case
    existing = Prediction.objects.filter(case=case, model_version=version).first()
    if existing:
        case.mark_done(existing)
        return case

    case.mark_running()
    try:
        predictor = get_predictor(version)
    except (ModelFileError, OSError, RuntimeError) as exc:
        log.exception("cannot load model %s", version.version)
        case.mark_failed(f"The published model {version.version} could not be loaded: {exc}")
        return case
    try:
        with default_storage.open(case.image.name, "rb") as f:
            (result,) = predictor.predict([f])
    except OSError as exc:
        log.exception("cannot read image of case %s", case.pk)
        case.mark_failed(f"The stored image could not be read: {exc}")
        return case
    except Exception as exc:
        log.exception("classification of case %s failed", case.pk)
        case.mark_failed(f"Classification failed ({type(exc).__name__}: {exc}).")
        return case

    try:
        prediction = Prediction.objects.create(
            case=case,
            model_version=version,
            probability=result.probability,
            threshold=result.threshold,
            decision=result.decision,
            elapsed_ms=result.ms,
            device=str(predictor.device),
        )
    except IntegrityError:
        # Another delivery of the same task got there first.
        prediction = Prediction.objects.get(case=case, model_version=version)
    case.mark_done(prediction)
    return case
