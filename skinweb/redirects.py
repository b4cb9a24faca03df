"""Redirects to a caller-supplied ``next``: only to this site, never to another host."""

from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme


def redirect_to_next(request, default, *args, **kwargs):
    """Redirect to ``next`` (POST, else GET) when it points at this site, otherwise to ``default``
    (a URL name or path, resolved with ``args``/``kwargs`` like ``redirect``)."""
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect(default, *args, **kwargs)
