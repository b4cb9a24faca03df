"""E-mail about referrals: a link to log in, never a patient's details (the mail leaves the platform).

Sent once the transaction that made the referral or its answer commits; a mail server that fails is logged and
changes nothing (the referral and its answer are saved, and shown on the pages)."""

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext

log = logging.getLogger(__name__)


def _send(compose, recipients: list[tuple[str, str]]) -> None:
    """Mail ``compose()`` -> (subject, body) to each (address, language) recipient, written in their
    language: a user's own choice, else the installation's LANGUAGE_CODE."""
    by_language: dict[str, set[str]] = {}
    for address, language in recipients:
        if address:
            by_language.setdefault(language or settings.LANGUAGE_CODE, set()).add(address)
    if not by_language:
        return
    letters = []
    for language, addresses in sorted(by_language.items()):
        with translation.override(language):
            letters.append((*compose(), sorted(addresses)))

    def send():
        for subject, body, addresses in letters:
            try:
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, addresses)
            except Exception:  # noqa: BLE001 -- a mail server down must not undo the clinical record
                log.exception("could not send %r to %d recipient(s)", subject, len(addresses))

    transaction.on_commit(send)


def link(name: str, *args) -> str:
    return settings.SITE_URL + reverse(name, args=args)


def referral_arrived(referral) -> None:
    """The receiving clinic's members with an address: a referral waits in their triage list."""
    recipients = list(referral.clinic.users.filter(is_active=True).exclude(email="").values_list("email", "language"))
    _send(lambda: (
        gettext("A new referral is waiting for review"),
        gettext("A referral from %(practice)s is waiting in your clinic's triage list.\n\nLog in to review it: "
                "%(link)s\n") % {"practice": referral.practice.name, "link": link("referrals:detail", referral.pk)},
    ), recipients)


def referral_answered(referral, answer) -> None:
    """The practice (its address and the referrer who sent it): the dermatologist has answered."""
    sender = referral.created_by
    recipients = [(referral.practice.email, ""), (getattr(sender, "email", ""), getattr(sender, "language", ""))]
    _send(lambda: (
        gettext("Your referral %(pk)s has been answered") % {"pk": referral.pk},
        gettext("%(clinic)s has answered referral %(pk)s (%(action)s).\n\nLog in to read the answer: %(link)s\n") % {
            "clinic": referral.clinic.name, "pk": referral.pk, "action": answer.get_action_display().lower(),
            "link": link("referrals:detail", referral.pk)},
    ), recipients)
