"""E-mail about referrals: a link to log in, never a patient's details (the mail leaves the platform).

Sent once the transaction that made the referral or its answer commits; a mail server that fails is logged and
changes nothing (the referral and its answer are saved, and shown on the pages)."""

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse

log = logging.getLogger(__name__)


def _send(subject: str, body: str, recipients: list[str]) -> None:
    recipients = sorted({r for r in recipients if r})
    if not recipients:
        return

    def send():
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
        except Exception:  # noqa: BLE001 -- a mail server down must not undo the clinical record
            log.exception("could not send %r to %d recipient(s)", subject, len(recipients))

    transaction.on_commit(send)


def link(name: str, *args) -> str:
    return settings.SITE_URL + reverse(name, args=args)


def referral_arrived(referral) -> None:
    """The receiving clinic's members with an address: a referral waits in their triage list."""
    recipients = list(referral.clinic.users.filter(is_active=True).exclude(email="").values_list("email", flat=True))
    _send("A new referral is waiting for review",
          f"A referral from {referral.practice.name} is waiting in your clinic's triage list.\n\n"
          f"Log in to review it: {link('referrals:detail', referral.pk)}\n", recipients)


def referral_answered(referral, answer) -> None:
    """The practice (its address and the referrer who sent it): the dermatologist has answered."""
    recipients = [referral.practice.email, getattr(referral.created_by, "email", "")]
    _send(f"Your referral {referral.pk} has been answered",
          f"{referral.clinic.name} has answered referral {referral.pk} ({answer.get_action_display().lower()}).\n\n"
          f"Log in to read the answer: {link('referrals:detail', referral.pk)}\n", recipients)
