import logging

from celery import shared_task
from django.db import transaction
from kombu.exceptions import OperationalError

from skinweb.clinic import classification

log = logging.getLogger(__name__)


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
        classification.classify_case(case_id)
    except classification.CaseBusy as busy:
        # Another worker's batch has it; come back when that claim would have gone stale.
        raise self.retry(countdown=max(1.0, float(busy.args[0]) + 1))


def enqueue_explanations(prediction_ids) -> None:
    """Ask for the heat maps of these predictions (one task per batch), once the transaction commits."""
    ids = list(prediction_ids)

    def send():
        try:
            explain.apply_async((ids,), retry=False)
        except OperationalError as exc:
            log.warning("broker unavailable, heat maps of %s left for the sweep: %s", ids, exc)

    if ids:
        transaction.on_commit(send)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def explain(prediction_ids) -> None:
    from skinweb.clinic.explanations import explain_predictions

    explain_predictions(prediction_ids)


@shared_task(ignore_result=True)
def sweep() -> None:
    """Periodic (Celery beat): re-send lost classifications, fail training runs that went silent."""
    from skinweb.clinic.sweep import sweep_missing_heatmaps, sweep_stale_cases
    from skinweb.models_registry.training import mark_stale_runs

    sweep_stale_cases()
    sweep_missing_heatmaps()
    mark_stale_runs()
