from functools import wraps

from django.core.exceptions import PermissionDenied


def _requires(test, message):
    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not test(request.user):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


# Relabelling: a clinic administrator (their clinic's cases) or the platform administrator (all).
admin_required = _requires(lambda u: u.is_platform_admin or u.is_clinic_admin, "Administrators only.")
# The shared model registry, retraining, publishing and rollback: the platform administrator only.
platform_admin_required = _requires(lambda u: u.is_platform_admin, "The platform administrator only.")
