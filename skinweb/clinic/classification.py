"""Django adapter to the classifier: classify one case with the published model version.

Runs in Celery workers (tasks.py) but knows nothing of Celery: it returns what is to be sent next
(the new predictions whose heat maps are wanted), and tasks.py sends it.
"""

import dataclasses
import io
import logging
import threading
import time

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from classifier import reference
from classifier.modelfile import ModelFileError
from skinweb.clinic.models import FAILURES, NO_MODEL_MESSAGE, Case, Prediction
from skinweb.models_registry.models import ModelVersion
from skinweb.workers import dead_on_this_host, worker_identity

log = logging.getLogger(__name__)


# One loaded model per worker process and device. Loading happens on first use, never at import:
# the prefork pool forks after import, and CUDA state must not cross a fork.
_predictors: dict[tuple, object] = {}  # classifier.predictor.Predictor
_lock = threading.Lock()


def get_predictor(version: ModelVersion):
    """The loaded model of ``version`` (on the runtime its fast-path report chose, when it has one)."""
    # The builds' states are part of the key: when the fast artefacts of the published version are
    # built, the next batch switches to them without a restart; so when its differential head is fitted
    # (with its reference library).
    key = (version.version, settings.INFERENCE_DEVICE, version.fast_path.get("built"), version.reference.get("built"))
    with _lock:
        if key not in _predictors:
            # A newly published version replaces the cached one: keep only the current model in memory.
            _predictors.clear()
            log.info("loading model %s on %s", version.version, settings.INFERENCE_DEVICE)
            from classifier.predictor import Predictor  # workers only: the web process never loads PyTorch

            _predictors[key] = Predictor.from_file(version.path, device=settings.INFERENCE_DEVICE)
    return _predictors[key]


@dataclasses.dataclass
class Outcome:
    case: Case
    explain: list[int]  # predictions written by this batch: their heat maps are to be asked for


class CaseBusy(Exception):
    """The case is being classified by another worker's batch right now; try again later."""


def claim_is_live(case: Case) -> bool:
    """Is another worker process still working on this running case?

    On this host the claimer's pid tells at once (a killed worker's cases are taken over as soon as
    its task is redelivered); a claim from another host is trusted for INFERENCE_CLAIM_TIMEOUT.
    """
    if case.status != Case.Status.RUNNING or not case.started_at or not case.claimed_by:
        return False
    if case.claimed_by == worker_identity() or dead_on_this_host(case.claimed_by):
        return False
    age = (timezone.now() - case.started_at).total_seconds()
    return age < settings.INFERENCE_CLAIM_TIMEOUT


def _claim_others(case: Case, limit: int) -> list[Case]:
    """Mark up to ``limit`` other queued cases running, oldest first, and return them.

    Each case is claimed by exactly one worker: rows are taken with SELECT ... FOR UPDATE SKIP
    LOCKED where the database has it (PostgreSQL), and SQLite runs write transactions one at a time.
    """
    if limit <= 0:
        return []
    with transaction.atomic():
        qs = Case.objects.filter(status=Case.Status.QUEUED).exclude(pk=case.pk).order_by("created_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        now = timezone.now()
        Case.objects.filter(pk__in=ids, status=Case.Status.QUEUED).update(
            status=Case.Status.RUNNING, started_at=now, failure_reason="", attempts=F("attempts") + 1,
            claimed_by=worker_identity(),
        )
    return list(Case.objects.filter(pk__in=ids, status=Case.Status.RUNNING).order_by("created_at", "pk"))


def _wait_for_burst(case: Case, batch_size: int, wait_s: float):
    """Give a burst of uploads a moment to arrive, so that they share one forward pass."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        waiting = Case.objects.filter(status=Case.Status.QUEUED).exclude(pk=case.pk).count()
        if waiting == 0 or waiting + 1 >= batch_size:
            return
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


def classify_case(case_id: int, batch_size: int | None = None) -> Outcome | None:
    """Classify a case with the published model, together with other queued cases (one forward pass).

    Each case gets its own prediction row and status. Idempotent: a case already classified by the
    published version is left as it is, so a task delivered twice (acks_late after a worker died)
    does no harm; the tasks of cases classified in another case's batch find them done. A case
    another worker claimed moments ago raises CaseBusy (the task retries later; if that worker died,
    the claim is stale by then and the case is classified here). Every failure ends as a readable
    reason on the case, never as a case stuck in "running". None when the case no longer exists.
    """
    case = Case.objects.filter(pk=case_id).select_related("prediction").first()
    if case is None:
        log.warning("case %s no longer exists or was removed", case_id)
        return None
    version = ModelVersion.objects.published()
    if version is None:
        case.mark_failed(NO_MODEL_MESSAGE)
        return Outcome(case, [])
    if case.status == Case.Status.DONE and case.prediction and case.prediction.model_version_id == version.pk:
        return Outcome(case, [])
    if claim_is_live(case):
        raise CaseBusy(settings.INFERENCE_CLAIM_TIMEOUT - (timezone.now() - case.started_at).total_seconds())

    batch_size = batch_size or settings.INFERENCE_BATCH_SIZE
    case.mark_running(worker_identity())
    _wait_for_burst(case, batch_size, settings.INFERENCE_BATCH_WAIT_MS / 1000)
    cases = [case, *_claim_others(case, batch_size - 1)]
    return Outcome(case, classify_batch(cases, version))


def classify_batch(cases: list[Case], version: ModelVersion) -> list[int]:
    """Classify cases already marked running with ``version``; one forward pass for all of them.
    Returns the ids of the predictions written."""
    todo = []
    for c in cases:
        existing = Prediction.objects.filter(case=c, model_version=version).first()
        if existing:
            c.mark_done(existing)
        else:
            todo.append(c)
    if not todo:
        return []
    try:
        predictor = get_predictor(version)
    except (ModelFileError, OSError, RuntimeError) as exc:
        log.exception("cannot load model %s", version.version)
        for c in todo:
            c.mark_failed(FAILURES["model"] % {"version": version.version, "detail": exc})
        return []

    start = time.perf_counter()
    stored, files = [], []
    for c in todo:
        try:
            with default_storage.open(c.image.name, "rb") as f:
                files.append(io.BytesIO(f.read()))
            stored.append(c)
        except OSError as exc:
            log.exception("cannot read image of case %s", c.pk)
            c.mark_failed(FAILURES["read"] % {"detail": exc})
    # Decoded on the predictor's decode threads (several on a GPU worker: classifier.predictor.default_decoders).
    ready, images = [], []
    for c, image in zip(stored, predictor.preprocess_each(files)):
        if isinstance(image, OSError):
            log.error("cannot read image of case %s", c.pk, exc_info=image)
            c.mark_failed(FAILURES["read"] % {"detail": image})
        elif isinstance(image, Exception):
            log.error("preprocessing of case %s failed", c.pk, exc_info=image)
            c.mark_failed(FAILURES["prepare"] % {"detail": f"{type(image).__name__}: {image}"})
        else:
            ready.append(c)
            images.append(image)
    if not ready:
        return []
    import torch  # workers only (the predictor above has loaded it already)

    try:
        probabilities, distances, views, embeddings = predictor.assess(torch.stack(images))
    except Exception as exc:
        log.exception("classification of cases %s failed", [c.pk for c in ready])
        for c in ready:
            c.mark_failed(FAILURES["classify"] % {"detail": f"{type(exc).__name__}: {exc}"})
        return []
    ms = (time.perf_counter() - start) * 1000 / len(ready)
    log.info("classified %d case(s) with %s on %s (%s) in %.0f ms per image", len(ready), version.version,
             predictor.device, predictor.runtime, ms)

    band_low, band_high = version.operating_point["band"]
    try:
        differentials = predictor.differentials(embeddings)
    except Exception:  # the differential is evidence beside the result: never a reason to fail the case
        log.exception("the differential of cases %s failed", [c.pk for c in ready])
        differentials = None
    written = []
    check = predictor.lesion_check if distances is not None else None
    for i, (c, p) in enumerate(zip(ready, probabilities)):
        try:
            prediction = Prediction.objects.create(
                case=c,
                model_version=version,
                probability=p,
                threshold=predictor.threshold,
                band_low=band_low,
                band_high=band_high,
                decision=predictor.decide(p),
                elapsed_ms=round(ms, 1),
                device=str(predictor.device),
                runtime=predictor.runtime,
                batch_size=len(ready),
                lesion_distance=None if check is None else round(distances[i], 3),
                lesion_cutoff=None if check is None else check.cutoff,
                views=views[i],
                embedding=b"" if embeddings is None else reference.encode(embeddings[i].numpy()),
                differential={} if differentials is None else differentials[i],
            )
        except IntegrityError:
            # Another delivery of the same task got there first.
            prediction = Prediction.objects.get(case=c, model_version=version)
        c.mark_done(prediction)
        written.append(prediction.pk)
    return written


def lesion_check(images: list[bytes]) -> list[dict]:
    """Is each image (stored bytes, as normalised at upload) a dermoscopic lesion, by the published model's
    lesion check (its gate, else the model file's distance check)? For a form that must refuse a picture that
    is not before anything is stored (a referral). [{"lesion": bool|None, "score", "cutoff"}]: None where the
    model has no check, or no model is published."""
    import torch  # workers only

    version = ModelVersion.objects.published()
    if version is None:
        return [{"lesion": None, "score": None, "cutoff": None} for _ in images]
    predictor = get_predictor(version)
    check = predictor.lesion_check
    if check is None:
        return [{"lesion": None, "score": None, "cutoff": None} for _ in images]
    batch = torch.stack([predictor.prepare(io.BytesIO(data)) for data in images])
    with torch.inference_mode():
        features = predictor.runner.both(batch)[1]
    scores = check.distances(features, batch).tolist()
    return [{"lesion": s <= check.cutoff, "score": round(float(s), 3), "cutoff": float(check.cutoff)}
            for s in scores]
