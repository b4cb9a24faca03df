"""The whole learning loop with real parts: Redis, a worker on inference+default and one on
training; an administrator drives it through the pages."""

import os
import signal
import time

import pytest
from django.urls import reverse

from skinweb.clinic.models import Case
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_lesion, make_patient, upload
from tests.conftest import FIXTURES, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait(predicate, what, workers, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    logs = "\n".join(w.output()[-3000:] for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


@pytest.fixture
def workers(worker_env, tmp_path):
    from skinweb.celery import app

    app.control.purge()
    started = [WorkerProcess(worker_env, tmp_path / "inference.log", queues="inference,default").start(),
               WorkerProcess(worker_env, tmp_path / "training.log", queues="training").start()]
    yield started
    for w in started:
        w.stop()


def upload_and_wait(client, lesion, workers):
    before = set(Case.objects.values_list("pk", flat=True))
    client.post(reverse("clinic:lesion_upload", args=[lesion.pk]),
                {"images": [upload(data=(FIXTURES / "images" / "ISIC_0010251.jpg").read_bytes())]})
    (pk,) = set(Case.objects.values_list("pk", flat=True)) - before
    return wait(lambda: Case.objects.filter(pk=pk, status__in=["done", "failed"]).select_related(
        "prediction__model_version").first(), "classification", workers)


def test_relabel_retrain_publish_rollback(client, settings, model_file, workers, carol, root):
    settings.TRAINING_DATASETS = [FIXTURES]
    admin = carol  # North's clinic administrator relabels; the platform administrator retrains
    client.force_login(admin)
    v1 = ModelVersion.import_file(model_file)
    v1.publish(reason="first")
    patient = make_patient(admin.clinic)
    lesion = make_lesion(patient)

    case = upload_and_wait(client, lesion, workers)
    assert case.status == "done" and case.prediction.model_version == v1
    # Relabel it (histopathology) and mark it for training.
    case.record_feedback(admin, agrees_with_ai=False, clinical_diagnosis="melanoma", management="excise",
                         histopathology_result="melanoma")
    client.post(reverse("clinic:relabel"), {"case": case.pk, "label": "malignant", "source": "histopathology",
                                            "use_for_training": "on"})

    # Retrain from the pages (the platform administrator); the training worker picks it up.
    assert client.post(reverse("manage:retrain"), {"epochs": 2}).status_code == 403  # not a clinic's to do
    client.force_login(root)
    r = client.post(reverse("manage:retrain"), {"epochs": 2})
    run = ModelVersion.objects.get(status__in=["training", "candidate", "failed"])
    assert r.url == reverse("manage:model_detail", args=[run.pk])
    run = wait(lambda: ModelVersion.objects.filter(pk=run.pk).exclude(status="training").first(), "the run", workers)
    assert run.status == "candidate", run.error
    assert run.training_data["clinic_cases_for_training"] == 1 and run.parent == v1
    assert run.evaluation["candidate"]["validation"]["n"] == run.evaluation["parent"]["validation"]["n"]
    body = client.get(reverse("manage:model_detail", args=[run.pk])).content.decode()
    assert "Candidate and parent on the same data" in body

    # Shadow check on the training queue.
    client.post(reverse("manage:shadow", args=[run.pk]), {"n": 10})
    shadow = wait(lambda: (lambda v: v.shadow if "changed" in v.shadow else None)(ModelVersion.objects.get(pk=run.pk)),
                  "the shadow check", workers)
    assert shadow["n"] == 1

    # Publish (a reason covers the case where a metric is worse); the next upload uses it.
    client.post(reverse("manage:publish", args=[run.pk]), {"reason": "retrained with our histopathology"})
    assert ModelVersion.objects.published() == run
    client.force_login(admin)
    assert upload_and_wait(client, lesion, workers).prediction.model_version == run

    # Roll back: one action; the next upload uses v1 again, no worker restart.
    client.force_login(root)
    client.post(reverse("manage:publish", args=[v1.pk]))
    assert ModelVersion.objects.published() == v1
    client.force_login(admin)
    assert upload_and_wait(client, lesion, workers).prediction.model_version == v1


def test_a_run_whose_worker_is_killed_resumes(client, settings, model_file, workers, root):
    settings.TRAINING_DATASETS = [FIXTURES]
    client.force_login(root)
    ModelVersion.import_file(model_file).publish(reason="first")
    client.post(reverse("manage:retrain"), {"epochs": 4})
    run = ModelVersion.objects.get(status="training")
    # Kill the pool process that trains (SIGKILL: no clean-up) once it has checkpointed an epoch.
    # (The heartbeats inside an epoch say within_epoch; the record after an epoch's checkpoint does not.)
    run = wait(lambda: ModelVersion.objects.filter(pk=run.pk, progress__epoch__gte=1,
                                                   progress__within_epoch__isnull=True).first(), "epoch 1", workers)
    pid = int(run.progress["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    # Celery redelivers the task (acks_late, reject_on_worker_lost) to a new pool process, which
    # resumes from the checkpoint: the run finishes, it is not left "training".
    run = wait(lambda: ModelVersion.objects.filter(pk=run.pk).exclude(status="training").first(), "the run", workers)
    assert run.status == "candidate", run.error
    assert int(run.progress["worker"].rpartition(":")[2]) != pid
    assert "resumed after epoch" in workers[1].output()
