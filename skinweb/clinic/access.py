"""The one way views fetch clinical records: scoped to the user's clinic, 404 for everyone else."""

from django.http import Http404


def get_for_user(user, model, **lookup):
    """Return the ``model`` row matching ``lookup`` that ``user`` may see, else raise Http404.

    A record of another clinic and a record that does not exist look the same from outside.
    """
    try:
        return model.objects.visible_to(user).get(**lookup)
    except (model.DoesNotExist, ValueError, TypeError):
        raise Http404(f"No {model._meta.verbose_name} found")
