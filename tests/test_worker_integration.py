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


def test_publishing_builds_the_fast_path_and_the_worker_switches_to_it(client, alice, model_file, worker_env, tmp_path):
    from django.core.management import call_command

    from skinweb.celery import app
    from skinweb.models_registry.models import ModelVersion
    from tests.conftest import WorkerProcess

    app.control.purge()  # build requests left by earlier tests' workers, which ignore that queue
    worker = WorkerProcess(worker_env, tmp_path / "worker.log", queues="inference,default").start()
    try:
        call_command("publish_model", str(model_file))
        version = ModelVersion.objects.get()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not version.fast_path.get("built"):
            time.sleep(0.5)
            version = ModelVersion.objects.get()
        assert version.fast_path.get("built"), worker.output()[-3000:]
        assert set(version.fast_report["runtimes"]) == {"torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-recheck"}

        lesion = make_lesion(make_patient(alice.clinic))
        client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("a.jpg")]})
        (case,) = wait_for(list(Case.objects.values_list("pk", flat=True)), worker)
        assert case.status == Case.Status.DONE
        assert case.prediction.runtime == version.runtime.replace("torch-fp32", "torch")
    finally:
        worker.stop()
