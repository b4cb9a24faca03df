from django.contrib.auth.models import AbstractUser
from django.db import models


class Clinic(models.Model):
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class User(AbstractUser):
    """A clinician belongs to one clinic and sees only that clinic's patients.

    Staff without a clinic administer through the Django admin only.
    """

    clinic = models.ForeignKey(Clinic, null=True, blank=True, on_delete=models.PROTECT, related_name="users")

    def __str__(self):
        return self.get_full_name() or self.username
