from functools import wraps

from django.core.exceptions import PermissionDenied


def staff_required(view):
    """Administrators only: anyone else gets 403, whatever the method."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Administrators only.")
        return view(request, *args, **kwargs)

    return wrapper
