"""Run the whole stack locally: Redis, a Celery worker and the web server, with demo logins.

Demo mode only: the logins it prints are fixed and must never reach a real deployment.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from classifier.modelfile import DEFAULT_MODEL_PATH
from skinweb.accounts.models import Clinic, User
from skinweb.models_registry.models import ModelVersion

DEMO_CLINIC = "Demo Dermatology Clinic"
DEMO_USERS = [
    # username, password, staff
    ("demo", "demo-skinweb", False),
    ("admin", "admin-skinweb", True),
]


def port_open(host, port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class Command(BaseCommand):
    help = "Set up demo data and run Redis, a Celery worker and the web server until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, addr, port, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self.prepare_static()
        self.seed()
        self.procs = []
        # Ctrl-C and SIGTERM both stop everything this command started (the finally below), also
        # when a shell started it in the background with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            self.start_redis()
            self.publish_starter_model()  # after Redis: publishing queues the fast-path build
            self.start(
                "worker",
                [sys.executable, "-m", "celery", "-A", "skinweb", "worker", "-Q", "inference,default",
                 "--concurrency", "1", "--loglevel", "INFO", "--hostname", "demo-worker@%h",
                 "--beat", "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")],
            )
            # Heat maps in their own process at a lower CPU priority: results never wait for them.
            self.start(
                "explainer",
                ["nice", "-n", "10", sys.executable, "-m", "celery", "-A", "skinweb", "worker", "-Q", "explain",
                 "--concurrency", "1", "--loglevel", "INFO", "--hostname", "demo-explainer@%h"],
            )
            # Retraining gets its own process, so that classification goes on during a run.
            self.start(
                "trainer",
                [sys.executable, "-m", "celery", "-A", "skinweb", "worker", "-Q", "training",
                 "--concurrency", "1", "--loglevel", "INFO", "--hostname", "demo-trainer@%h"],
            )
            if port_open(addr, port):
                raise CommandError(f"{addr}:{port} is already in use; stop what runs there or pass --port.")
            self.start("web", [sys.executable, "manage.py", "runserver", f"{addr}:{port}", "--noreload"])
            for _ in range(300):
                if port_open(addr, port):
                    break
                time.sleep(0.1)
            self.banner(f"http://{addr}:{port}/")
            while all(p.poll() is None for _, p in self.procs):
                time.sleep(0.5)
            dead = [name for name, p in self.procs if p.poll() is not None]
            raise CommandError(f"{', '.join(dead)} stopped unexpectedly; see the log above.")
        except KeyboardInterrupt:
            self.stdout.write("\nstopping…")
        finally:
            self.stop_all()

    def prepare_static(self):
        """Without DEBUG, pages name static files by their hashed copies (whitenoise's manifest):
        collect them first, or every page would fail. Quick when nothing changed."""
        if not settings.DEBUG:
            self.stdout.write("DEBUG is off: collecting static files")
            call_command("collectstatic", interactive=False, verbosity=0)

    def seed(self):
        clinic, _ = Clinic.objects.get_or_create(name=DEMO_CLINIC)
        for username, password, staff in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username, defaults={"clinic": clinic})
            user.clinic = clinic
            user.is_staff = user.is_superuser = staff
            user.set_password(password)
            user.save()

    def publish_starter_model(self):
        if ModelVersion.objects.published() or not DEFAULT_MODEL_PATH.exists():
            return
        call_command("publish_model", str(DEFAULT_MODEL_PATH), reason="starter model shipped with skinweb")

    def start(self, name, cmd):
        self.stdout.write(f"starting {name}: {' '.join(cmd)}")
        # Own process group: Ctrl-C reaches only this command, which then stops the others in
        # order (web, worker, Redis) instead of all of them racing to exit.
        self.procs.append((name, subprocess.Popen(cmd, env=os.environ.copy(), process_group=0)))

    def start_redis(self):
        url = urlparse(settings.REDIS_URL)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        if port_open(host, port):
            self.stdout.write(f"using the Redis already listening on {host}:{port}")
            return
        if host not in ("127.0.0.1", "localhost"):
            raise CommandError(f"no Redis answers at {settings.REDIS_URL}")
        binary = shutil.which("redis-server")
        if not binary:
            raise CommandError("redis-server is not installed: apt-get install redis-server (make run does this).")
        data = settings.VAR_DIR / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                             "--appendonly", "yes", "--save", ""])
        for _ in range(50):
            if port_open(host, port):
                return
            time.sleep(0.1)
        raise CommandError("redis-server did not start")

    def stop_all(self):
        """Stop what this command started: SIGTERM to each main process (a Celery worker then shuts
        down warmly, its pool and beat children with it), SIGKILL to each process group still there
        after 20 seconds (children that outlived their parent included), and Redis last, so that
        workers can hand back unfinished messages on the way out."""
        # A second Ctrl-C must not cut the clean-up short and leave processes behind: it is bounded
        # by the timeouts below anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        others = [p for name, p in self.procs if name != "redis"]
        redis = [p for name, p in self.procs if name == "redis"]
        for group in (others, redis):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                self.signal_group(proc, signal.SIGKILL)

    @staticmethod
    def signal_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def banner(self, url):
        published = ModelVersion.objects.published()
        lines = [
            "",
            "=" * 72,
            f"skinweb is running at {url}",
            "Demo logins (demo mode only):",
            *[f"  {'admin' if staff else 'dermatologist'}: {u} / {p}" for u, p, staff in DEMO_USERS],
            f"Model: {published.version} (threshold {published.threshold:.3f})" if published else
            "Model: NO MODEL PUBLISHED YET. Uploads will fail until one is: train one with\n"
            "  python -m classifier.train --data DIR --out DIR\n"
            "  and publish it with: python manage.py publish_model FILE",
            "Press Ctrl-C to stop everything.",
            "=" * 72,
            "",
        ]
        self.stdout.write("\n".join(lines))
