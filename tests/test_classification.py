"""The worker's plain function, without Celery: statuses, predictions, readable failures."""

import os
import socket
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from classifier import predictor as classifier_predictor
from skinweb.clinic import classification
from skinweb.clinic import tasks as clinic_tasks
from skinweb.clinic.models import Case, Prediction
from skinweb.models_registry import fastpath as registry_fastpath
from skinweb.models_registry import tasks
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_clinic, make_lesion, make_model_file, make_patient
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    classification._predictors.clear()
    yield
    classification._predictors.clear()


@pytest.fixture
def case():
    return make_case(make_lesion(make_patient(make_clinic())))


def test_without_a_published_model_the_case_fails_with_instructions(case):
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.FAILED
    assert "No model is published yet" in case.failure_reason and "publish_model" in case.failure_reason


def test_classifies_with_the_published_version(case, published_model):
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.DONE and case.failure_reason == ""
    p = case.prediction
    assert p.model_version == published_model and p.threshold == 0.5
    assert 0 <= p.probability <= 1 and p.decision == ("malignant" if p.probability >= 0.5 else "benign")
    assert p.elapsed_ms > 0 and p.device == "cpu"
    assert case.attempts == 1 and case.finished_at >= case.started_at


def test_the_prediction_records_the_views_its_decision_averaged(alice, client, tmp_path):
    """All 8 for a version that averages them; one where its cascade stops at once (margins 0); the
    case page says how many."""
    from django.urls import reverse

    case = make_case(make_lesion(make_patient(alice.clinic)))
    import dataclasses

    from classifier.model import load_classifier
    from classifier.modelfile import save_model_file

    make_model_file(tmp_path / "one.safetensors")
    model, meta = load_classifier(tmp_path / "one.safetensors")
    every = dataclasses.replace(meta, version="test-d8", tta="dihedral8")
    save_model_file(tmp_path / "d8.safetensors", model, every)
    cascade = {"stages": [1, 8], "margins": [0.0], "band_margins": [0.0], "order": list(range(8))}
    save_model_file(tmp_path / "early.safetensors", model, dataclasses.replace(every, version="test-early",
                                                                                cascade=cascade))
    for name, views in (("d8", 8), ("early", 1)):
        ModelVersion.import_file(tmp_path / f"{name}.safetensors").publish()
        c = make_case(case.lesion)
        classification.classify_case(c.pk)
        c.refresh_from_db()
        assert c.prediction.views == views
        page = client.get(reverse("clinic:case_detail", args=[c.pk])).content.decode()
        assert f"{views} of 8 averaged" in page


def test_running_twice_is_harmless(case, published_model):
    classification.classify_case(case.pk)
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert Prediction.objects.count() == 1 and case.attempts == 1


def test_redelivery_after_a_crash_finishes_the_case(case, published_model):
    """A worker killed mid-task leaves the case 'running'; the redelivered task completes it."""
    case.mark_running()
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.DONE and Prediction.objects.count() == 1


def test_broken_model_file_fails_the_case_readably(case, published_model):
    published_model.path.write_bytes(b"garbage, not safetensors")
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.FAILED
    assert f"published model {published_model.version} could not be loaded" in case.failure_reason


def test_missing_image_fails_the_case_readably(case, published_model):
    case.image.storage.delete(case.image.name)
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.FAILED and "image could not be read" in case.failure_reason


def test_newly_published_version_is_loaded_and_recorded(case, published_model, tmp_path):
    classification.classify_case(case.pk)
    make_model_file(tmp_path / "v2.safetensors", version="test-v2", threshold=0.3, seed=1)
    v2 = ModelVersion.import_file(tmp_path / "v2.safetensors")
    v2.publish()
    second = make_case(case.lesion)
    classification.classify_case(second.pk)
    second.refresh_from_db()
    assert second.prediction.model_version == v2 and second.prediction.threshold == 0.3
    assert list(classification._predictors) == [("test-v2", "auto", None, None)]  # only the current version is kept
    published_model.refresh_from_db()
    assert published_model.status == ModelVersion.Status.RETIRED


def test_deleted_case_is_ignored(published_model):
    assert classification.classify_case(987654) is None


def spy_on_forward_passes(monkeypatch):
    """Count the predictor's forward passes (the real method still runs)."""
    calls = []
    real = classifier_predictor.Predictor.assess

    def assess(self, batch):
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(classifier_predictor.Predictor, "assess", assess)
    return calls


def test_queued_cases_are_classified_in_one_forward_pass(case, published_model, monkeypatch, settings):
    settings.INFERENCE_BATCH_WAIT_MS = 0
    others = [make_case(case.lesion) for _ in range(5)]
    calls = spy_on_forward_passes(monkeypatch)
    classification.classify_case(case.pk, batch_size=4)
    assert calls == [4]  # this case and the three oldest queued ones
    done = Case.objects.filter(status=Case.Status.DONE)
    assert done.count() == 4 and set(Prediction.objects.values_list("batch_size", flat=True)) == {4}
    for c in done:
        assert c.prediction.case_id == c.pk and c.prediction.runtime == "torch" and c.attempts == 1
    # The tasks of the cases classified in that batch find them done: no more model calls.
    for c in others[:3]:
        classification.classify_case(c.pk, batch_size=4)
    assert calls == [4]
    # The rest go in the next batch.
    classification.classify_case(others[3].pk, batch_size=4)
    assert calls == [4, 2] and not Case.objects.exclude(status=Case.Status.DONE).exists()


def test_one_bad_image_fails_alone_in_its_batch(case, published_model, settings):
    settings.INFERENCE_BATCH_WAIT_MS = 0
    broken = make_case(case.lesion)
    broken.image.storage.delete(broken.image.name)
    classification.classify_case(case.pk, batch_size=8)
    case.refresh_from_db()
    broken.refresh_from_db()
    assert case.status == Case.Status.DONE
    assert broken.status == Case.Status.FAILED and "image could not be read" in broken.failure_reason


def test_a_case_another_live_worker_claimed_is_left_to_it(case, published_model, settings):
    # Claimed moments ago by a live process on this host (the test runner's parent).
    case.mark_running(claimed_by=f"{socket.gethostname()}:{os.getppid()}")
    with pytest.raises(classification.CaseBusy):
        classification.classify_case(case.pk)
    # ... or by a worker on another host, within the claim timeout.
    case.mark_running(claimed_by="other-host:1")
    with pytest.raises(classification.CaseBusy):
        classification.classify_case(case.pk)
    assert not Prediction.objects.exists()
    # Once the claim is older than the timeout, the case is taken over.
    Case.objects.filter(pk=case.pk).update(
        started_at=timezone.now() - timedelta(seconds=settings.INFERENCE_CLAIM_TIMEOUT + 1)
    )
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.DONE


def test_a_case_claimed_by_a_dead_worker_is_taken_over_at_once(case, published_model):
    dead = subprocess.Popen(["true"])
    dead.wait()
    case.mark_running(claimed_by=f"{socket.gethostname()}:{dead.pid}")
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.DONE and case.claimed_by == classification.worker_identity()


def test_the_fast_path_is_asked_for_once_by_publishing_or_the_sweep_never_by_a_worker(
        case, published_model, django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks, "send", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        classification.classify_case(case.pk)  # a worker only loads what is there
    assert sent == [] and published_model.fast_path == {}
    with django_capture_on_commit_callbacks(execute=True):
        tasks.sweep()  # the registry's periodic task: the published version was never asked for
        tasks.sweep()
        assert tasks.request_fast_path(published_model) is False  # publishing again: already asked
    assert sent == [published_model.pk]
    published_model.refresh_from_db()
    assert "building_since" in published_model.fast_path


def test_a_request_that_could_not_be_sent_is_asked_for_again(published_model, monkeypatch):
    from kombu.exceptions import OperationalError

    def broker_down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks.build_fast_path, "apply_async", broker_down)
    tasks.send(published_model.pk)
    published_model.refresh_from_db()
    assert published_model.fast_path == {}


def test_switches_to_the_fast_runtime_once_built_without_a_restart(case, published_model, settings):
    settings.INFERENCE_BATCH_WAIT_MS = 0
    settings.TRAINING_DATASETS = [FIXTURES]
    classification.classify_case(case.pk)
    report = registry_fastpath.build(published_model)
    assert report["chosen"] in ("torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-recheck")
    published_model = ModelVersion.objects.get(pk=published_model.pk)
    # One copy of the report: the file beside the model; the row says only that it is built.
    assert published_model.fast_path == {"built": report["created"]}
    assert published_model.fast_report == report
    second = make_case(case.lesion)
    classification.classify_case(second.pk)
    second.refresh_from_db()
    # The fastest accepted runtime on this CPU, as the worker timed them (classifier.predictor.fastest_here).
    assert report["runtimes"][second.prediction.runtime.replace("torch", "torch-fp32")]["passed"]
    published_model = ModelVersion.objects.get(pk=published_model.pk)
    assert published_model.recent_runtimes == {"torch": 1, second.prediction.runtime: 1} \
        if second.prediction.runtime != "torch" else {"torch": 2}
    assert published_model.runtime.startswith(second.prediction.runtime)


def test_without_training_data_the_build_uses_the_shipped_check_set(published_model, settings, tmp_path):
    settings.TRAINING_DATASETS = []
    published_model.metadata = {**published_model.metadata, "training": {"dataset": str(tmp_path / "gone")}}
    assert registry_fastpath.calibration_dataset(published_model) == settings.BASE_DIR / "classifier" / "checkset"
    settings.TRAINING_DATASETS = [FIXTURES]
    assert registry_fastpath.calibration_dataset(published_model) == FIXTURES  # configured data comes first


def test_a_failed_build_is_recorded_and_workers_stay_on_pytorch(published_model, settings, tmp_path):
    settings.TRAINING_DATASETS = []
    settings.FAST_PATH_CHECKSET = tmp_path / "no-checkset"
    published_model.metadata = {**published_model.metadata, "training": {}}
    assert registry_fastpath.build(published_model) is None
    published_model = ModelVersion.objects.get(pk=published_model.pk)
    assert "no images here to calibrate int8 on" in published_model.fast_path["error"]
    assert published_model.runtime == "torch"


def test_sweep_resends_cases_whose_message_may_be_lost(case, settings, monkeypatch):
    from skinweb.clinic import sweep

    old = timezone.now() - timedelta(seconds=settings.SWEEP_QUEUED_AFTER + 1)
    fresh = make_case(case.lesion)  # queued just now: its message is surely still in the broker
    Case.objects.filter(pk=case.pk).update(enqueued_at=old)
    stuck = make_case(case.lesion)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stuck.mark_running(claimed_by=f"{socket.gethostname()}:{dead.pid}")
    Case.objects.filter(pk=stuck.pk).update(started_at=old, enqueued_at=old)
    busy = make_case(case.lesion)
    busy.mark_running(claimed_by=f"{socket.gethostname()}:{os.getppid()}")  # a live worker, moments ago
    Case.objects.filter(pk=busy.pk).update(started_at=timezone.now(), enqueued_at=old)

    sent = []
    monkeypatch.setattr(clinic_tasks.classify_case, "delay", sent.append)
    clinic_tasks.sweep()  # what beat runs: the plain function finds the cases, the task sends them
    assert sorted(sent) == sorted([case.pk, stuck.pk])
    case.refresh_from_db()
    assert case.enqueued_at > old and fresh.pk not in sent and busy.pk not in sent
    assert sweep.stale_cases() == []  # just sent again: not again until the next period


def test_several_decode_threads_give_each_case_the_result_one_thread_gives(case, published_model, settings,
                                                                             monkeypatch):
    """A worker decoding a batch on several threads (a GPU worker's default, SKINWEB_DECODERS) writes
    what decoding on one gives, each to its own case, and an unreadable image fails alone."""
    import threading

    from django.core.files.base import ContentFile

    settings.INFERENCE_BATCH_WAIT_MS = 0
    images = sorted((FIXTURES / "images").glob("*.jpg"))[:4]
    cases = [make_case(case.lesion, data=p.read_bytes()) for p in images]
    case.image.storage.delete(case.image.name)
    case.image.storage.save(case.image.name, ContentFile(b"not an image: the stored copy was damaged"))
    one_thread = classifier_predictor.Predictor.from_file(published_model.path, device="cpu")
    assert one_thread.decoders == 1  # a CPU worker's cores run the network
    expected = []
    for c in cases:
        with c.image.storage.open(c.image.name, "rb") as f:
            expected.append(one_thread.probabilities([f])[0])

    monkeypatch.setenv("SKINWEB_DECODERS", "3")
    threads = set()
    prepare = classifier_predictor.Predictor.prepare
    monkeypatch.setattr(classifier_predictor.Predictor, "prepare",
                        lambda self, source: threads.add(threading.current_thread().name) or prepare(self, source))
    classification.classify_case(case.pk, batch_size=8)
    assert any(t.startswith("decode") for t in threads)  # on the pool, not the calling thread
    case.refresh_from_db()
    assert case.status == Case.Status.FAILED and "image could not be read" in case.failure_reason
    for c, p in zip(cases, expected):
        c.refresh_from_db()
        assert c.status == Case.Status.DONE and c.prediction.probability == pytest.approx(p, abs=1e-6)
