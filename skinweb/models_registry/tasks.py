import logging

from datetime import timedelta

from celery import shared_task
from django.db import transaction
from django.db.models import Q
from kombu.exceptions import OperationalError
from django.utils import timezone

from skinweb.models_registry import fastpath
from skinweb.models_registry.models import ModelVersion

log = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def build_fast_path(version_id: int) -> None:
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None:
        fastpath.build(version)


def request_fast_path(version: ModelVersion) -> bool:
    """Queue the build of a version's fast artefacts once; True when this call queued it.

    Called when a version is published and when a worker first loads a version without them, so
    however a version got published, CPU workers end up on the fastest accepted runtime.
    """
    now = timezone.now()
    stale = (now - timedelta(minutes=30)).isoformat()  # a request whose message or worker got lost
    with transaction.atomic():
        queued = ModelVersion.objects.filter(
            Q(fast_path={}) | Q(fast_path__building_since__lt=stale), pk=version.pk
        ).update(fast_path={"building_since": now.isoformat()})
        if queued:
            transaction.on_commit(lambda: send(version.pk), robust=True)
    return bool(queued)


def send(version_id):
    try:
        build_fast_path.apply_async((version_id,), queue="default", retry=False)
    except OperationalError as exc:  # no broker: the next worker to load the version asks again
        log.warning("could not queue the fast-path build of model version %s: %s", version_id, exc)
        ModelVersion.objects.filter(pk=version_id).update(fast_path={})


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_model(version_id: int) -> None:
    """On the ``training`` queue; a redelivery after a worker crash resumes from the checkpoint."""
    from skinweb.models_registry import training

    training.run_training(version_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def shadow_check(version_id: int, n: int) -> None:
    from skinweb.models_registry import training

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None and version.filename:
        result = training.shadow_check(version, n)
        ModelVersion.objects.filter(pk=version_id).update(shadow=result)
