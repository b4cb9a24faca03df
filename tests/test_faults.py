"""Faults injected into the real stack (Redis, Celery worker processes); no case may be lost.

Each test kills real processes on loopback and cleans up after itself. The recovery path under
test is the one production uses: redelivery where the broker still has the message, and the
sweep (skinweb/clinic/sweep.py, sent by tasks.sweep, run by beat every minute) where it does not.
"""

import os
import signal
import time

import pytest
from django.urls import reverse

from skinweb.clinic import tasks
from skinweb.clinic.models import Case
from tests.builders import make_lesion, make_patient, upload
from tests.conftest import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def statuses():
    return dict(Case.objects.values_list("pk", "status"))


def wait_all_done(workers, n, timeout=120, sweep=True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = statuses()
        if len(s) == n and all(v == "done" for v in s.values()):
            return
        if sweep:
            tasks.sweep()  # what beat runs every SWEEP_INTERVAL seconds
        time.sleep(0.5)
    logs = "\n".join(w.output()[-2000:] for w in workers)
    raise AssertionError(f"not all done: {statuses()}\n{logs}")


def upload_many(client, lesion, n, prefix):
    for i in range(n):
        r = client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload(f"{prefix}{i}.jpg")]})
        assert r.status_code == 302, r.status_code


def kill_group(worker):
    """SIGKILL the worker's main process and its pool child (its process group): no clean-up, no requeue."""
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)
    worker.stop()  # closes its log; nothing is left to stop


@pytest.fixture
def lesion(alice):
    return make_lesion(make_patient(alice.clinic))


def test_worker_killed_while_classifying_loses_nothing(client, lesion, published_model, worker_env, settings, tmp_path):
    settings.SWEEP_QUEUED_AFTER = 0
    env = {**worker_env, "INFERENCE_BATCH_SIZE": "1", "INFERENCE_BATCH_WAIT_MS": "0"}  # one case per task
    first = WorkerProcess(env, tmp_path / "w1.log").start()
    n = 12
    upload_many(client, lesion, n, "k")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(v in ("running", "done") for v in statuses().values()):
        time.sleep(0.01)
    kill_group(first)
    interrupted = statuses()
    assert list(interrupted.values()).count("done") < n, "the worker finished before it could be killed"
    second = WorkerProcess(env, tmp_path / "w2.log").start()
    try:
        wait_all_done([first, second], n)
    finally:
        second.stop()
    assert Case.objects.filter(predictions__isnull=False).distinct().count() == n
    # One prediction per case: nothing classified twice into the record.
    assert all(c.predictions.count() == 1 for c in Case.objects.all())


def test_broker_restart_with_queued_cases_and_uploads_while_down(client, lesion, published_model, worker_env,
                                                                 redis, settings, tmp_path):
    settings.SWEEP_QUEUED_AFTER = 0
    # Cases queued in Redis with no worker running; then Redis dies and comes back empty.
    upload_many(client, lesion, 3, "q")
    redis.stop()
    # Uploads while the broker is down still succeed.
    upload_many(client, lesion, 3, "d")
    assert list(statuses().values()) == ["queued"] * 6
    redis.start()
    worker = WorkerProcess(worker_env, tmp_path / "w.log").start()
    try:
        upload_many(client, lesion, 2, "a")  # and after it is back
        wait_all_done([worker], 8)
    finally:
        worker.stop()


def test_redis_restart_under_a_running_worker(client, lesion, published_model, worker_env, redis, settings, tmp_path):
    settings.SWEEP_QUEUED_AFTER = 0
    worker = WorkerProcess(worker_env, tmp_path / "w.log").start()
    try:
        upload_many(client, lesion, 2, "b")
        wait_all_done([worker], 2, sweep=False)
        redis.stop()
        time.sleep(1)
        redis.start()
        upload_many(client, lesion, 3, "c")  # the worker reconnects by itself
        wait_all_done([worker], 5)
    finally:
        worker.stop()


def test_concurrent_clinicians_uploading_get_no_errors_and_lose_nothing(live_server, published_model, celery_worker):
    """8 clinicians of two clinics upload 100 images at once over HTTP while the worker writes
    predictions: no 5xx, no 'database is locked', every upload is one case, each classified once."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.stack import Browser
    from tests.builders import PASSWORD, image_bytes, make_clinic, make_user

    clinics = [make_clinic("East"), make_clinic("West")]
    users = [make_user(f"doc{i}", clinics[i % 2]) for i in range(8)]
    lesions = {u.pk: make_lesion(make_patient(u.clinic)) for u in users}
    browsers = []
    for u in users:
        b = Browser(live_server.url)
        b.login(u.username, PASSWORD)
        browsers.append((u, b))
    errors = []

    def one(i):
        user, browser = browsers[i % len(browsers)]
        try:
            status, url, body = browser.post(f"/lesions/{lesions[user.pk].pk}/upload/",
                                             files=[("images", f"u{i}.jpg", image_bytes("JPEG", size=(64 + i, 48)))])
            if status != 200 or "/cases/" not in url:
                errors.append((i, status, url))
        except Exception as exc:  # an HTTP 5xx raises here
            errors.append((i, repr(exc)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(100)))
    assert errors == []
    assert Case.objects.count() == 100
    # Each clinician's uploads landed in their own lesion, none twice.
    for user in users:
        assert Case.objects.filter(lesion=lesions[user.pk]).count() == len(range(users.index(user), 100, 8))
    wait_all_done([celery_worker], 100, timeout=300)
    assert all(c.predictions.count() == 1 for c in Case.objects.all())
