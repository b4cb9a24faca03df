from celery import shared_task

from skinweb.clinic import classification


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def classify_case(case_id: int) -> None:
    classification.classify_case(case_id)
