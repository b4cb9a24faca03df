"""The database is the source of truth: a periodic sweep (Celery beat, every SWEEP_INTERVAL
seconds) sends the task again for every case whose message may have been lost — still queued long
after it was sent (broker restarted without persistence, message dropped), or running under a
claim that is no longer live (its worker was killed and the message not redelivered). Classifying
is idempotent, so a message sent twice costs nothing."""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from skinweb.clinic import classification, tasks
from skinweb.clinic.models import Case, Prediction

log = logging.getLogger(__name__)


def sweep_stale_cases(send=None) -> list[int]:
    send = send or (lambda pk: tasks.classify_case.delay(pk))
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.SWEEP_QUEUED_AFTER)
    queued = list(Case.objects.filter(status=Case.Status.QUEUED, enqueued_at__lt=cutoff)
                  .values_list("pk", flat=True)[:1000])
    running = [c.pk for c in Case.objects.filter(status=Case.Status.RUNNING, started_at__lt=cutoff,
                                                 enqueued_at__lt=cutoff)[:1000]
               if not classification.claim_is_live(c)]
    resent = []
    for pk in queued + running:
        Case.objects.filter(pk=pk).update(enqueued_at=now)
        send(pk)
        resent.append(pk)
    if resent:
        log.warning("re-sent the classification of %d case(s) whose message may have been lost: %s",
                    len(resent), resent[:20])
    return resent


def sweep_missing_heatmaps(send=None) -> list[int]:
    """Ask again for heat maps that should long have been computed (their message was lost)."""
    send = send or tasks.enqueue_explanations
    cutoff = timezone.now() - timedelta(seconds=settings.SWEEP_QUEUED_AFTER)
    ids = list(Prediction.objects.filter(heatmap="", explanation_error="", created_at__lt=cutoff)
               .values_list("pk", flat=True)[:1000])
    for start in range(0, len(ids), 16):
        send(ids[start:start + 16])
    if ids:
        log.warning("asked again for %d heat map(s): %s", len(ids), ids[:20])
    return ids
