"""Run the whole stack locally: Redis, Celery workers and the web server, with demo logins.

Demo mode only: the logins it prints are fixed and must never reach a real deployment. The
processes are started and stopped by skinweb.launcher (as the benchmark and the tests do).
"""

import signal
import sys
import time
from urllib.parse import urlparse

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from classifier.modelfile import DEFAULT_MODEL_PATH
from classifier.operatingpoint import DEFAULT_OPERATING_POINT_PATH
from classifier.operatingpoint import read as read_operating_point
from skinweb.accounts.models import Clinic, Role, User
from skinweb.launcher import (
    STOP_AT_ONCE,
    LaunchError,
    Processes,
    port_open,
    redis_command,
    wait_for_port,
    worker_command,
)
from skinweb.models_registry.models import ModelVersion

DEMO_CLINIC = "Demo Dermatology Clinic"
DEMO_USERS = [
    # username, password, role (README, "Roles")
    ("demo", "demo-skinweb", Role.CLINICIAN),
    ("clinicadmin", "clinicadmin-skinweb", Role.CLINIC_ADMIN),
    ("admin", "admin-skinweb", Role.PLATFORM_ADMIN),
    ("referrer", "referrer-skinweb", Role.REFERRER),
]
DEMO_PRACTICE = ("Demo Family Practice", "DEMO-GP")
DEMO_MAIL_DOMAIN = "demo.invalid"  # referral e-mails go to var/mail/ in the demo (no EMAIL_HOST)


class Command(BaseCommand):
    help = "Set up demo data and run Redis, a Celery worker and the web server until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, addr, port, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self.prepare_static()
        self.seed()
        self.stack = Processes(echo=self.stdout.write)
        # Ctrl-C and SIGTERM both stop everything this command started (the finally below), also
        # when a shell started it in the background with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            self.start_redis()
            self.publish_starter_model()  # after Redis: publishing queues the fast-path build
            self.stack.start("worker", worker_command("inference,default", "demo-worker@%h",
                                                      beat_schedule=settings.VAR_DIR / "celerybeat-schedule"))
            # Heat maps in their own process at a lower CPU priority: results never wait for them.
            self.stack.start("explainer", worker_command("explain", "demo-explainer@%h", nice=10))
            # Retraining gets its own process, so that classification goes on during a run; and so do the
            # builds of a version's fast path and reference library (the first minutes after a fresh start:
            # the first uploads must not wait behind them). Both at a low CPU priority, and stopped at once.
            self.stack.start("trainer", worker_command("training", "demo-trainer@%h", nice=10), env=STOP_AT_ONCE)
            self.stack.start("builder", worker_command("builds", "demo-builder@%h", nice=19), env=STOP_AT_ONCE)
            if port_open(addr, port):
                raise CommandError(f"{addr}:{port} is already in use; stop what runs there or pass --port.")
            web = self.stack.start("web", [sys.executable, "manage.py", "runserver", f"{addr}:{port}", "--noreload"])
            wait_for_port(port, 30, host=addr, proc=web)
            self.banner(f"http://{addr}:{port}/")
            while not self.stack.dead():
                time.sleep(0.5)
            raise CommandError(f"{', '.join(self.stack.dead())} stopped unexpectedly; see the log above.")
        except LaunchError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            self.stdout.write("\nstopping…")
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave processes behind: it is
            # bounded by the launcher's timeouts anyway.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.stack.stop_all()

    def prepare_static(self):
        """Without DEBUG, pages name static files by their hashed copies (whitenoise's manifest):
        collect them first, or every page would fail. Quick when nothing changed."""
        if not settings.DEBUG:
            self.stdout.write("DEBUG is off: collecting static files")
            call_command("collectstatic", interactive=False, verbosity=0)

    def seed(self):
        from skinweb.referrals.models import Practice

        clinic, _ = Clinic.objects.get_or_create(name=DEMO_CLINIC)
        practice, _ = Practice.objects.get_or_create(name=DEMO_PRACTICE[0], defaults={
            "code": DEMO_PRACTICE[1], "email": f"practice@{DEMO_MAIL_DOMAIN}"})
        practice.clinics.add(clinic)
        for username, password, role in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            # The platform administrator belongs to no clinic: it runs the installation, not a practice. The
            # referrer belongs to a practice that refers to the demo clinic.
            user.clinic = None if role in (Role.PLATFORM_ADMIN, Role.REFERRER) else clinic
            user.practice = practice if role == Role.REFERRER else None
            user.email = user.email or f"{username}@{DEMO_MAIL_DOMAIN}"
            user.is_staff = role in (Role.CLINIC_ADMIN, Role.PLATFORM_ADMIN)
            user.is_superuser = role == Role.PLATFORM_ADMIN
            user.set_password(password)
            user.save()

    def publish_starter_model(self):
        """The shipped starter with its shipped operating point; an installation still on the starter's
        weights with their own (older) operating point moves to it, any other published version stays."""
        if not DEFAULT_MODEL_PATH.exists():
            return
        published = ModelVersion.objects.published()
        op = read_operating_point(DEFAULT_OPERATING_POINT_PATH) if DEFAULT_OPERATING_POINT_PATH.exists() else None
        if published and not (op and published.version == op["weights"]["version"]):
            return
        if op:
            call_command("publish_model", str(DEFAULT_MODEL_PATH), operating_point=str(DEFAULT_OPERATING_POINT_PATH),
                         reason="starter model shipped with skinweb, with the operating point fitted without the "
                                "locked test split")
        else:
            call_command("publish_model", str(DEFAULT_MODEL_PATH), reason="starter model shipped with skinweb")

    def start_redis(self):
        url = urlparse(settings.REDIS_URL)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        if port_open(host, port):
            self.stdout.write(f"using the Redis already listening on {host}:{port}")
            return
        if host not in ("127.0.0.1", "localhost"):
            raise CommandError(f"no Redis answers at {settings.REDIS_URL}")
        data = settings.VAR_DIR / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.stack.start("redis", redis_command(port, data, persistent=True), ready_port=port, timeout=5)

    def banner(self, url):
        published = ModelVersion.objects.published()
        lines = [
            "",
            "=" * 72,
            f"skinweb is running at {url}",
            "Demo logins (demo mode only):",
            *[f"  {role.label.lower()}: {u} / {p}" for u, p, role in DEMO_USERS],
            f"Model: {published.version} (threshold {published.threshold:.3f})" if published else
            "Model: NO MODEL PUBLISHED YET. Uploads will fail until one is: train one with\n"
            "  python -m classifier.training.train --data DIR --out DIR\n"
            "  and publish it with: python manage.py publish_model FILE",
            f"REST API: docs at {url}api/docs/ (signed in); tokens at {url}account/tokens/",
            "Press Ctrl-C to stop everything.",
            "=" * 72,
            "",
        ]
        self.stdout.write("\n".join(lines))
