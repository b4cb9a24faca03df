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
