"""The one way views fetch clinical records: scoped to the user's clinic, 404 for everyone else."""

from functools import wraps

from django.http import Http404, HttpResponseNotAllowed


def get_for_user(user, model, **lookup):
    """Return the ``model`` row matching ``lookup`` that ``user`` may see, else raise Http404.

    A record of another clinic and a record that does not exist look the same from outside.
    """
    try:
        return model.objects.visible_to(user).get(**lookup)
    except (model.DoesNotExist, ValueError, TypeError):
        raise Http404(f"No {model._meta.verbose_name} found") from None


def admin_scope(user, queryset):
    """What an administrator works on: a clinic's administrator their clinic's records, the platform
    administrator everyone's (the views are behind ``admin_required``)."""
    return queryset if user.is_platform_admin else queryset.visible_to(user)


def object_view(model, methods=("GET",)):
    """Decorate a view taking ``pk``: it receives the record instead, fetched with get_for_user.

    Access is checked before the HTTP method, so another clinic's ID gives 404 whatever the
    method: an outsider learns nothing, not even which IDs exist.
    """

    def decorator(view):
        @wraps(view)
        def wrapper(request, pk, *args, **kwargs):
            obj = get_for_user(request.user, model, pk=pk)
            if request.method not in methods:
                return HttpResponseNotAllowed(methods)
            return view(request, obj, *args, **kwargs)

        return wrapper

    return decorator
