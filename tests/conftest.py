import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from skinweb.bench_stack import free_port, wait_for_port
from skinweb.celery import app as celery_app
from tests.builders import make_clinic, make_model_file, make_user

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_dirs(settings, tmp_path):
    """Every test gets its own media and model folders."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODEL_ROOT = tmp_path / "models"
    settings.MEDIA_ROOT.mkdir()
    # Tests render templates without running collectstatic first.
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    return settings


@pytest.fixture
def alice(client):
    """Alice, a dermatologist of the North clinic, logged in (the test must allow database access)."""
    user = make_user("alice", make_clinic("North"))
    client.force_login(user)
    return user


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "test.safetensors"
    make_model_file(path)
    return path


@pytest.fixture
def published_model(db, model_file):
    from skinweb.models_registry.models import ModelVersion

    version = ModelVersion.import_file(model_file)
    version.publish(reason="test")
    return version


class RedisServer:
    """A real redis-server on a loopback port, without persistence; it can be stopped and started
    again on the same port (broker-restart tests)."""

    def __init__(self, workdir):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not installed (make test installs it)")
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # like a crash: whatever was queued is gone
            self.proc.wait(10)


def use_broker(url):
    """Point this process's Celery app at ``url``, dropping connections an earlier test may have
    pooled to the default broker (a send that failed still leaves its pool bound to that URL)."""
    celery_app.conf.broker_url = url
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
        celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(scope="session")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    use_broker(server.url)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(redis):
    """The URL of the session's real redis-server."""
    return redis.url


def database_env() -> dict:
    """Environment that points another process at the test database this session uses."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return {"SQLITE_PATH": str(s["NAME"]), "DATABASE_URL": ""}
    return {
        "DATABASE_URL": f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    }


class WorkerProcess:
    def __init__(self, env, log_path, queues="inference"):
        self.env, self.log_path, self.queues = env, log_path, queues
        self.proc = None

    def start(self, timeout=60.0):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "skinweb", "worker", "-Q", self.queues, "--pool", "prefork",
             "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO",
             "--hostname", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in Path(self.log_path).read_bytes():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start:\n{Path(self.log_path).read_text()[-3000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self):
        return Path(self.log_path).read_text(errors="replace")


@pytest.fixture
def worker_env(transactional_db, redis_server, settings):
    """Environment for a worker process that shares this test's database, broker and folders."""
    return {
        **os.environ,
        **database_env(),
        "REDIS_URL": redis_server,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "MODEL_ROOT": str(settings.MODEL_ROOT),
        "DJANGO_SETTINGS_MODULE": "skinweb.settings",
        "INFERENCE_DEVICE": "cpu",
        "TRAINING_DATASETS": str(ROOT / "tests" / "fixtures" / "isic"),
        "INFERENCE_BATCH_WAIT_MS": "100",
    }


@pytest.fixture
def celery_worker(worker_env, tmp_path):
    """A real Celery worker process on the inference queue, sharing this test's database and folders."""
    worker = WorkerProcess(worker_env, tmp_path / "worker.log").start()
    yield worker
    worker.stop()
