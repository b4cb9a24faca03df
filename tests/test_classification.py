"""The worker's plain function, without Celery: statuses, predictions, readable failures."""

import pytest

from skinweb.clinic import classification
from skinweb.clinic.models import Case, Prediction
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_clinic, make_lesion, make_model_file, make_patient

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
    assert list(classification._predictors) == [("test-v2", "auto")]
    published_model.refresh_from_db()
    assert published_model.status == ModelVersion.Status.RETIRED


def test_deleted_case_is_ignored(published_model):
    assert classification.classify_case(987654) is None
