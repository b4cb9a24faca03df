"""Upload → Redis → a real Celery worker process → prediction in the database. No eager mode."""

import time

import pytest
from django.urls import reverse

from skinweb.clinic.models import Case
from tests.builders import image_bytes, make_lesion, make_patient, upload

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_for(case_ids, worker, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cases = list(Case.objects.filter(pk__in=case_ids).select_related("prediction__model_version"))
        if cases and all(c.status in (Case.Status.DONE, Case.Status.FAILED) for c in cases):
            return cases
        time.sleep(0.2)
    raise AssertionError(f"cases not finished in {timeout}s; worker log:\n{worker.output()[-4000:]}")


def test_upload_is_classified_by_a_real_worker(client, alice, published_model, celery_worker):
    lesion = make_lesion(make_patient(alice.clinic))
    r = client.post(
        reverse("clinic:lesion_upload", args=[lesion.pk]),
        {"images": [upload("one.jpg"), upload("two.png", image_bytes("PNG", size=(120, 90)), "image/png")]},
    )
    assert r.status_code == 302
    cases = wait_for(list(Case.objects.values_list("pk", flat=True)), celery_worker)
    assert len(cases) == 2
    for case in cases:
        assert case.status == Case.Status.DONE, case.failure_reason
        assert case.prediction.model_version.version == published_model.version
        assert case.prediction.threshold == published_model.threshold
        assert case.prediction.device == "cpu"
    # The case page shows the result the worker stored.
    body = client.get(reverse("clinic:case_status", args=[cases[0].pk])).content.decode()
    assert published_model.version in body and ("AI decision" in body or "AI result: <strong>borderline" in body)
    assert "hx-trigger" not in body
    assert "Save feedback" in body  # the finished panel brings the feedback form, no reload needed


def test_without_a_model_the_worker_fails_the_case_and_retry_works_once_published(
    client, alice, celery_worker, model_file
):
    from skinweb.models_registry.models import ModelVersion

    lesion = make_lesion(make_patient(alice.clinic))
    client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("x.jpg")]})
    (case,) = wait_for(list(Case.objects.values_list("pk", flat=True)), celery_worker)
    assert case.status == Case.Status.FAILED and "No model is published yet" in case.failure_reason
    assert "Retry" in client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()

    ModelVersion.import_file(model_file).publish()
    client.post(reverse("clinic:case_retry", args=[case.pk]))
    (case,) = wait_for([case.pk], celery_worker)
    assert case.status == Case.Status.DONE and case.attempts == 1


def test_a_burst_of_uploads_shares_forward_passes(client, alice, published_model, celery_worker):
    lesion = make_lesion(make_patient(alice.clinic))
    n = 8
    r = client.post(reverse("clinic:lesion_upload", args=[lesion.pk]),
                    {"images": [upload(f"{i}.jpg") for i in range(n)]})
    assert r.status_code == 302
    cases = wait_for(list(Case.objects.values_list("pk", flat=True)), celery_worker)
    assert len(cases) == n and all(c.status == Case.Status.DONE for c in cases)
    sizes = [c.prediction.batch_size for c in cases]
    forward_passes = sum(1 / s for s in sizes)
    assert max(sizes) > 1 and round(forward_passes) < n, sizes
    assert len({c.prediction_id for c in cases}) == n  # each case still has its own prediction


def test_publishing_builds_the_fast_path_apart_and_the_worker_switches_to_it(client, alice, model_file, worker_env,
                                                                             tmp_path):
    """issue 43: the build runs on the low-priority "builds" queue in a process of its own; an upload made
    while it runs is classified at once (on PyTorch), and once it is built the worker moves to the fastest
    accepted runtime on its CPU without a restart."""
    from django.core.management import call_command

    from classifier import artefacts
    from skinweb.celery import app
    from skinweb.models_registry.models import ModelVersion
    from tests.conftest import WorkerProcess

    app.control.purge()  # build requests left by earlier tests' workers, which ignore that queue
    worker = WorkerProcess(worker_env, tmp_path / "worker.log", queues="inference,default").start()
    builder = WorkerProcess(worker_env, tmp_path / "builder.log", queues="builds").start()
    try:
        call_command("publish_model", str(model_file))
        version = ModelVersion.objects.get()
        lesion = make_lesion(make_patient(alice.clinic))
        client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("during.jpg")]})
        (during,) = wait_for(list(Case.objects.values_list("pk", flat=True)), worker)
        assert during.status == Case.Status.DONE and during.prediction.runtime == "torch"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not version.fast_path.get("built"):
            time.sleep(0.5)
            version = ModelVersion.objects.get()
        assert version.fast_path.get("built"), builder.output()[-3000:]
        # Classified before the build was done: it did not wait behind it.
        assert during.prediction.created_at.isoformat() < version.fast_path["built"].replace("Z", "+00:00")
        report = version.fast_report
        assert {"torch-fp32", "onnx-fp32"} <= set(report["runtimes"]) and "int8_probe" in report

        client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("after.jpg")]})
        (after,) = wait_for(list(Case.objects.exclude(pk=during.pk).values_list("pk", flat=True)), worker)
        assert after.status == Case.Status.DONE
        # The worker timed the accepted runtimes here, or used the timing another process on this CPU recorded
        # first for this build (artefacts.record_speed): either way the one entry for this CPU is what it runs.
        (timed,) = artefacts.read_speeds(version.path).values()
        assert after.prediction.runtime == timed["chosen"], worker.output()[-4000:]
        assert report["runtimes"][timed["chosen"].replace("torch", "torch-fp32")]["passed"]
    finally:
        worker.stop()
        builder.stop()


def test_a_builder_told_to_stop_mid_build_stops_by_itself_and_hands_the_build_back(worker_env, redis_server, settings,
                                                                                    tmp_path):
    """Ctrl-C of `make run` during a fast-path build (issue 43): the builder (REMAP_SIGTERM=SIGQUIT, as the demo
    starts it) gives the build a few seconds, cancels it and exits by itself, well before the launcher's 20 s
    would kill it; the build's message is back in Redis for the next start."""
    import redis as redis_client
    from django.core.management import call_command

    from classifier.modelfile import DEFAULT_MODEL_PATH
    from skinweb.celery import app
    from skinweb.launcher import STOP_AT_ONCE
    from skinweb.models_registry.models import ModelVersion
    from tests.conftest import WorkerProcess

    app.control.purge()
    call_command("publish_model", str(DEFAULT_MODEL_PATH))  # the starter's build takes minutes
    assert ModelVersion.objects.get().fast_path.get("building_since")
    broker = redis_client.Redis.from_url(redis_server)
    builder = WorkerProcess({**worker_env, **STOP_AT_ONCE, "TRAINING_DATASETS": ""}, tmp_path / "builder.log",
                            queues="builds").start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "classifier.training.fastpath" not in _descendants(builder.proc.pid):
        time.sleep(0.2)
    assert "classifier.training.fastpath" in _descendants(builder.proc.pid), builder.output()[-3000:]
    builder.stop()
    assert builder.proc.returncode >= 0, f"killed ({builder.proc.returncode}):\n{builder.output()[-3000:]}"
    assert broker.llen("builds") == 1, builder.output()[-3000:]
    assert ModelVersion.objects.get().fast_path.get("building_since")  # not marked failed: asked for again


def _descendants(pid) -> str:
    """The command lines of ``pid``'s descendants, joined."""
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    children, found, todo = {}, [], [str(pid)]
    for row in rows:
        if len(row) == 3:
            children.setdefault(row[1], []).append((row[0], row[2]))
    while todo:
        for child, args in children.get(todo.pop(), []):
            found.append(args)
            todo.append(child)
    return " ".join(found)
