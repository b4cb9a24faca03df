"""The tests' OpenID Connect provider (django-oauth-toolkit), started in its own process."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

# (username, clinic claim, role claims); each password is "<username>-pass".
USERS = [("nurse", "North", ["clinician"]), ("chief", "North", ["clinic_admin"]),
         ("stranger", "Nowhere", ["clinician"]), ("norole", "North", []), ("boss", "North", ["platform_admin"])]


def start_provider(workdir, redirect_uri):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    users = [{"username": u, "password": f"{u}-pass", "clinic": c, "roles": r} for u, c, r in USERS]
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve.py")), str(port),
                                str(workdir), redirect_uri, json.dumps(users)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):  # runserver binds a moment after
        try:
            requests.get(base + "/o/.well-known/openid-configuration", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    return process, base
