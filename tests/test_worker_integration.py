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
    assert published_model.version in body and "AI decision" in body and "hx-trigger" not in body
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
