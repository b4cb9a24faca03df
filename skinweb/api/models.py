"""API tokens (django-rest-knox): only a SHA-512 digest of each token is stored; the token itself is
shown once, when it is made. A token expires (API_TOKEN_DAYS at most), and its user or their
clinic's administrator can revoke it at any time (``skinweb.api.tokens``)."""

from django.db import models
from django.utils.translation import gettext_lazy as _
from knox.models import AbstractAuthToken


class ApiToken(AbstractAuthToken):
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'dermatoscope bridge'")
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ["-created"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.token_key}…) of {self.user}"
