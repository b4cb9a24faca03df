"""The clinic's Celery tasks: the only module of the clinic that sends messages. The functions they
call (classification, explanations, sweep) are plain and return what is to be sent."""

import logging

from celery import shared_task
from django.db import transaction
from kombu.exceptions import OperationalError

from skinweb.clinic import classification
from skinweb.clinic import sweep as sweeps

log = logging.getLogger(__name__)

EXPLAIN_BATCH = 16  # predictions per heat-map task


def enqueue(case_id: int) -> None:
    """Send the case's task once the transaction commits. If the broker is down the case stays
    queued in the database (the user's upload still succeeds) and the sweep sends it later."""

    def send():
        try:
            classify_case.apply_async((case_id,), retry=False)
        except OperationalError as exc:
            log.warning("broker unavailable, case %s stays queued for the sweep: %s", case_id, exc)

    transaction.on_commit(send)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=None)
def classify_case(self, case_id: int) -> None:
    try:
        outcome = classification.classify_case(case_id)
    except classification.CaseBusy as busy:
        # Another worker's batch has it; come back when that claim would have gone stale.
        raise self.retry(countdown=max(1.0, float(busy.args[0]) + 1)) from None
    if outcome is not None:
        enqueue_explanations(outcome.explain)  # the results are visible now; their heat maps follow
        enqueue_fhir(outcome.explain)  # and, where a FHIR server is configured, the record hears of them


@shared_task(ignore_result=False, acks_late=False)
def check_lesions(images_b64: list[str]) -> list[dict]:
    """The published model's lesion check of images a form holds (base64 of the stored bytes), answered to the
    web process waiting for it (skinweb.clinic.classification.lesion_check)."""
    import base64

    return classification.lesion_check([base64.b64decode(b) for b in images_b64])


def lesion_check_now(images: list[bytes], timeout: float) -> list[dict] | None:
    """Ask an inference worker to check these images and wait up to ``timeout`` seconds for the answer; None
    when no worker answered in time (or the broker is down): the caller decides what that means."""
    import base64

    from celery.exceptions import TimeoutError as CeleryTimeout

    try:
        result = check_lesions.apply_async(([base64.b64encode(b).decode() for b in images],), retry=False,
                                           expires=timeout)
    except OperationalError as exc:
        log.warning("broker unavailable, images not checked: %s", exc)
        return None
    try:
        return result.get(timeout=timeout, propagate=True)
    except CeleryTimeout:
        log.warning("no worker checked the images within %.0f s", timeout)
        return None
    except Exception:  # noqa: BLE001 -- the check failed in the worker: as unchecked
        log.exception("the lesion check failed")
        return None
    finally:
        result.forget()


def enqueue_explanations(prediction_ids) -> None:
    """Ask for the heat maps of these predictions (one task per batch), once the transaction commits."""
    ids = list(prediction_ids)

    def send():
        for start in range(0, len(ids), EXPLAIN_BATCH):
            batch = ids[start:start + EXPLAIN_BATCH]
            try:
                explain.apply_async((batch,), retry=False)
            except OperationalError as exc:
                log.warning("broker unavailable, heat maps of %s left for the sweep: %s", batch, exc)

    if ids:
        transaction.on_commit(send)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def explain(prediction_ids) -> None:
    from skinweb.clinic.explanations import explain_predictions  # workers only: Grad-CAM needs PyTorch

    explain_predictions(prediction_ids)


@shared_task(ignore_result=True)
def sweep() -> None:
    """Periodic (Celery beat): send again what may have been lost (skinweb/clinic/sweep.py)."""
    for case_id in sweeps.stale_cases():
        classify_case.delay(case_id)
    enqueue_explanations(sweeps.missing_heatmaps())


def enqueue_fhir(prediction_ids) -> None:
    """Send these predictions' cases to the configured FHIR server (none configured: nothing)."""
    from django.conf import settings

    from skinweb.clinic.models import Prediction

    if not settings.FHIR_ENDPOINT or not prediction_ids:
        return
    case_ids = list(Prediction.objects.filter(pk__in=list(prediction_ids)).values_list("case_id", flat=True))

    def send():
        for case_id in case_ids:
            try:
                push_fhir.apply_async((case_id,), retry=False)
            except OperationalError as exc:
                log.warning("broker unavailable, case %s not sent to the FHIR server: %s", case_id, exc)

    transaction.on_commit(send)


@shared_task(bind=True, acks_late=True, ignore_result=True)
def push_fhir(self, case_id: int) -> str:
    """Send a case's result to the FHIR server as a transaction of conditional creates (sending it again
    stores nothing twice); retried with growing waits (30 s, 1, 2, 4… min) while the server is
    unreachable or failing; a refusal is final. Each attempt's outcome is in the audit trail."""
    from django.conf import settings

    from skinweb.audit.models import record
    from skinweb.clinic import fhir
    from skinweb.clinic.models import Case

    case = Case.objects.with_related().filter(pk=case_id).first()
    if case is None or not settings.FHIR_ENDPOINT:
        return "nothing to send"
    bundle = fhir.case_bundle(case, lambda path: settings.SITE_URL + path, kind="transaction")
    attempt = self.request.retries + 1
    try:
        status = fhir.push(bundle, settings.FHIR_ENDPOINT, settings.FHIR_AUTHORIZATION)
    except fhir.PushRetry as exc:
        last = self.request.retries >= settings.FHIR_PUSH_RETRIES
        record(None, "fhir_push", case, outcome="given up" if last else "will retry", attempt=attempt,
               error=str(exc)[:500])
        if last:
            return "given up"
        raise self.retry(countdown=30 * 2**self.request.retries, max_retries=settings.FHIR_PUSH_RETRIES) from None
    except fhir.PushFailed as exc:
        record(None, "fhir_push", case, outcome="refused", attempt=attempt, error=str(exc)[:500])
        return "refused"
    record(None, "fhir_push", case, outcome="sent", attempt=attempt, status=status, bundle=bundle["id"])
    return "sent"
