"""Who a worker process is, and whether another one still lives: for claims on cases and runs."""

import os
import socket


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_on_this_host(owner: str) -> bool:
    """True when ``owner`` ("host:pid") names a process of this host that no longer exists.

    A claim from another host cannot be checked this way (False): callers trust it until a timeout.
    """
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False
