"""The database is the source of truth: a periodic sweep (Celery beat, every SWEEP_INTERVAL
seconds, tasks.sweep) sends the task again for every case whose message may have been lost — still
queued long after it was sent (broker restarted without persistence, message dropped), or running
under a claim that is no longer live (its worker was killed and the message not redelivered).
Classifying is idempotent, so a message sent twice costs nothing. These functions find what to
send; tasks.sweep sends it."""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from skinweb.clinic import classification
from skinweb.clinic.models import Case, Prediction

log = logging.getLogger(__name__)


def stale_cases() -> list[int]:
    """Cases whose message may have been lost, marked sent again now (so the next sweep waits)."""
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
        resent.append(pk)
    if resent:
        log.warning("sending again the classification of %d case(s) whose message may have been lost: %s",
                    len(resent), resent[:20])
    return resent


def missing_heatmaps() -> list[int]:
    """Predictions whose heat maps should long have been computed (their message was lost)."""
    cutoff = timezone.now() - timedelta(seconds=settings.SWEEP_QUEUED_AFTER)
    ids = list(Prediction.objects.filter(heatmap="", explanation_error="", created_at__lt=cutoff)
               .values_list("pk", flat=True)[:1000])
    if ids:
        log.warning("asking again for %d heat map(s): %s", len(ids), ids[:20])
    return ids
