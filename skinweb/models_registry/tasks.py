"""The registry's Celery tasks; everything they call is a plain function that returns what to send."""

import logging

from celery import shared_task
from django.db import transaction
from kombu.exceptions import OperationalError

from skinweb.models_registry import fastpath, reference, training
from skinweb.models_registry.models import ModelVersion

log = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def build_fast_path(version_id: int) -> None:
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None:
        fastpath.build(version)
        if version.status == ModelVersion.Status.PUBLISHED:
            request_reference(version)  # embedded with the runtime the workers now use


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def build_reference(version_id: int) -> None:
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None and version.filename:
        reference.build(version)


def request_reference(version: ModelVersion) -> bool:
    """Ask once for the build of a version's reference library; True when this call queued it."""
    return ask_once(reference.claim, send_reference, version)


def send_reference(version_id):
    # On the builds queue: embedding the dataset takes a worker's CPU for as long as an epoch (about an
    # hour for the 6,588 development images on 2 cores) and must not hold up classification.
    send_build(build_reference, "builds", reference.release, "reference library", version_id)


def request_fast_path(version: ModelVersion) -> bool:
    """Ask once for the build of a version's fast artefacts; True when this call queued it.

    Publishing calls it, and so does the periodic sweep for the published version, so however a
    version got published, CPU workers end up on the fastest accepted runtime.
    """
    return ask_once(fastpath.claim, send, version)


def send(version_id):
    # On the builds queue, as the library: the build is 5 to 12 minutes of both cores here, and a worker
    # that also classified would leave every upload waiting behind it.
    send_build(build_fast_path, "builds", fastpath.release, "fast-path build", version_id)


def ask_once(claim, send_task, version: ModelVersion) -> bool:
    """Mark a build of ``version`` asked for (``claim``) and, when this call did, send its task once the
    transaction commits; True when this call queued it."""
    with transaction.atomic():
        queued = claim(version)
        if queued:
            transaction.on_commit(lambda: send_task(version.pk), robust=True)
    return queued


def send_build(task, queue_name: str, release, what: str, version_id) -> None:
    """Send a build's task; without a broker release the request, so that the next sweep asks again."""
    try:
        task.apply_async((version_id,), queue=queue_name, retry=False)
    except OperationalError as exc:
        log.warning("could not queue the %s of model version %s: %s", what, version_id, exc)
        release(version_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_model(version_id: int) -> None:
    """On the ``training`` queue; a redelivery after a worker crash resumes from the checkpoint."""
    training.run_training(version_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def shadow_check(version_id: int, n: int) -> None:
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None and version.filename:
        result = training.shadow_check(version, n)
        ModelVersion.objects.filter(pk=version_id).update(shadow=result)


@shared_task(ignore_result=True)
def sweep() -> None:
    """Periodic (Celery beat): fail training runs that went silent; ask for the published version's
    fast artefacts, and then its reference library, when they were never asked for or the request was
    lost."""
    training.mark_stale_runs()
    published = ModelVersion.objects.published()
    if published is not None and published.filename:
        request_fast_path(published)
        if set(published.fast_path) & {"built", "error"}:  # the library waits for the fast path
            reference.release_if_lost(published)
            request_reference(published)
