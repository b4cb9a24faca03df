from django.conf import settings


def client_ip(request) -> str | None:
    """The client's address: REMOTE_ADDR, or with PROXY_COUNT trusted proxies in front, the address
    the outermost of them saw (X-Forwarded-For, counted from the right: clients can forge the left)."""
    if settings.PROXY_COUNT:
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= settings.PROXY_COUNT:
            return hops[-settings.PROXY_COUNT]
    return request.META.get("REMOTE_ADDR")
