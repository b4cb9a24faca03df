import os
import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

from skinweb.celery import app as celery_app
from skinweb.launcher import LaunchError, Processes, free_port, redis_command, wait_for_port, worker_command
from tests.builders import make_clinic, make_model_file, make_user

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "isic"  # 12 ISIC images with labels.csv (see its ATTRIBUTION)


def pytest_addoption(parser):
    parser.addoption("--db-only", action="store_true",
                     help="run only the tests that use the database (tests/run_all.sh's PostgreSQL pass: what "
                          "uses no database gives the same result on either, and ran in the SQLite pass)")


def uses_database(item) -> bool:
    """pytest-django blocks the database for a test that did not ask for it (the ``db`` or
    ``transactional_db`` fixture, directly or through another fixture, or the django_db marker)."""
    return item.get_closest_marker("django_db") is not None or "_django_db_helper" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    if config.getoption("--db-only"):
        kept = [item for item in items if uses_database(item)]
        config.hook.pytest_deselected(items=[item for item in items if not uses_database(item)])
        items[:] = kept


@pytest.fixture(autouse=True)
def private_dirs(settings, tmp_path):
    """Every test gets its own media and model folders."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODEL_ROOT = tmp_path / "models"
    # Tests log the platform administrator in without a second factor (force_login); the rule that
    # outside DEBUG they need one is tested on its own (tests/test_two_factor.py).
    settings.PLATFORM_ADMIN_TWO_FACTOR = False
    # A referral form asks a worker whether its images are lesions; tests with a worker ask for it.
    settings.REFERRAL_CHECK_SECONDS = 0
    # Test users' passwords hashed in microseconds, not 0.3 s each (Django's advice for test suites): the
    # users and logins of a run took minutes of it. Production keeps Django's PBKDF2 (settings.py sets no
    # hashers).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # nosec: test users only
    settings.MEDIA_ROOT.mkdir()
    # Tests render templates without running collectstatic first.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    return settings


@pytest.fixture(autouse=True)
def empty_django_cache():
    """The cache (the API's throttle counters) starts empty in every test."""
    from django.core.cache import cache

    cache.clear()


# The cast, shared by every test file (the test must allow database access):
#   north, south  two clinics;
#   alice         a dermatologist of North, logged in on ``client``;
#   bob           a dermatologist of South;
#   carol         North's clinic administrator (staff of one clinic: relabels North's cases);
#   root          the platform administrator (staff, no clinic: the registry, every clinic's queue).
# Log in another member with ``client.force_login(member)``.


@pytest.fixture
def north(db):
    return make_clinic("North")


@pytest.fixture
def south(db):
    return make_clinic("South")


@pytest.fixture
def alice(client, north):
    user = make_user("alice", north)
    client.force_login(user)
    return user


@pytest.fixture
def bob(south):
    return make_user("bob", south)


@pytest.fixture
def carol(north):
    return make_user("carol", north, staff=True)


@pytest.fixture
def root(db):
    return make_user("root", None, superuser=True)


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
    """A real redis-server on a loopback port, without persistence (skinweb.launcher); it can be
    stopped and started again on the same port (broker-restart tests)."""

    def __init__(self, workdir):
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        try:
            self.command = redis_command(self.port, workdir)
        except LaunchError as exc:
            pytest.fail(str(exc))

    def start(self):
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # like a crash: whatever was queued is gone
            self.proc.wait(10)


def use_broker(url):
    """Point this process's Celery app at ``url``, dropping connections an earlier test may have
    pooled to the default broker (a send that failed still leaves its pool bound to that URL)."""
    celery_app.conf.broker_url = url
    celery_app.conf.result_backend = url  # the results a page waits for (tasks.check_lesions)
    if hasattr(celery_app._local, "backend"):  # made per thread from the configuration, when first used
        del celery_app._local.backend
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
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    return {"DATABASE_URL": f"postgres://{s['USER']}:{s['PASSWORD']}@{host}:{port}/{s['NAME']}"}


class WorkerProcess:
    """A real Celery worker process (skinweb.launcher's command), logging to ``log_path``."""

    def __init__(self, env, log_path, queues="inference"):
        self.log_path, self.queues = Path(log_path), queues
        self.processes = Processes(env, log_dir=self.log_path.parent)
        self.proc = None

    def start(self, timeout=60.0):
        cmd = worker_command(self.queues, hostname=f"test-{os.getpid()}-{time.monotonic_ns()}@%h")
        self.proc = self.processes.start(self.log_path.stem, cmd, ready_text=b" ready.", timeout=timeout)
        return self

    def stop(self):
        self.processes.stop_all()

    def output(self):
        return self.log_path.read_text(errors="replace")


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
