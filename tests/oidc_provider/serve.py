"""Run the test OpenID Connect provider on 127.0.0.1:PORT with users and one client application.

    python tests/oidc_provider/serve.py PORT WORKDIR REDIRECT_URI USERS_JSON

USERS_JSON: [{"username": ..., "password": ..., "clinic": ..., "roles": [...]}]. Prints "ready", then
serves until killed (its log goes to WORKDIR/provider.log). The client is "skinweb" / "skinweb-secret".
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
    port, workdir, redirect_uri, users = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    os.environ["OIDC_PROVIDER_KEY"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()).decode()
    os.environ["OIDC_PROVIDER_DB"] = str(workdir / "provider.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.oidc_provider.settings"
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0)
    for u in users:
        User.objects.create_user(u["username"], password=u["password"], first_name=",".join(u["roles"]),
                                 last_name=u["clinic"])
    Application.objects.create(name="skinweb", client_id="skinweb", client_secret="skinweb-secret",
                               client_type=Application.CLIENT_CONFIDENTIAL, redirect_uris=redirect_uri,
                               authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
                               algorithm=Application.RS256_ALGORITHM, skip_authorization=True)
    print("ready", flush=True)
    log = open(workdir / "provider.log", "w")  # noqa: SIM115 (open for the life of the process)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=True)


if __name__ == "__main__":
    main()
