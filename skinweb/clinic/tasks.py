from celery import shared_task

from skinweb.clinic import classification


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=None)
def classify_case(self, case_id: int) -> None:
    try:
        classification.classify_case(case_id)
    except classification.CaseBusy as busy:
        # Another worker's batch has it; come back when that claim would have gone stale.
        raise self.retry(countdown=max(1.0, float(busy.args[0]) + 1))


@shared_task(ignore_result=True)
def sweep() -> None:
    """Periodic (Celery beat): re-send lost classifications, fail training runs that went silent."""
    from skinweb.clinic.sweep import sweep_stale_cases
    from skinweb.models_registry.training import mark_stale_runs

    sweep_stale_cases()
    mark_stale_runs()
