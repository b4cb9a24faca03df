"""An operating point fitted apart from the weights (issue 44, point 1): a small file beside them, the model
file it makes checked by sha256, registered and published as its own version, scored on the locked split."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from classifier import operatingpoint
from classifier.artefacts import read_ledger
from classifier.modelfile import DEFAULT_MODEL_PATH, file_sha256, read_metadata

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "isic"


def run(tool, *args):
    return subprocess.run([sys.executable, "-m", f"classifier.training.{tool}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny model trained on the fixtures, and an operating point fitted for it without the locked split."""
    tmp = tmp_path_factory.mktemp("op")
    r = run("train", "--data", str(FIXTURES), "--out", str(tmp / "run"), "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--warmup-epochs", "1", "--threads", "2")
    assert r.returncode == 0, r.stderr
    model = tmp / "model.safetensors"
    shutil.copyfile(tmp / "run" / "model.safetensors", model)
    r = run("operatingpoint", "--model", str(model), "--data", str(FIXTURES), "--out", str(tmp / "model.op.json"),
            "--logits", str(tmp / "logits.npz"), "--ledger", str(tmp / "ledger.jsonl"), "--date", "20261206",
            "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    return tmp, model, tmp / "model.op.json", json.loads(r.stdout)


def test_the_operating_point_is_fitted_without_the_locked_images_and_scored_on_them(fitted):
    tmp, model, op_path, printed = fitted
    op = operatingpoint.read(op_path)
    meta = read_metadata(model)
    assert op["version"] == f"{meta.version}-op20261206" == printed["version"]
    assert op["weights"]["sha256"] == file_sha256(model)
    fit = op["fitted_on"]
    assert fit["locked_test_left_out"] and fit["images"] == 5  # 9 validation images, 4 of them locked
    assert 0 < op["threshold"] < 1 and op["operating_point"]["band"][0] <= op["threshold"]
    entry = read_ledger(tmp / "ledger.jsonl")[op["model_sha256"]]
    assert entry["version"] == op["version"] and entry["n"] == 4 and entry["operating_point_clean"]
    assert entry["clean"] is False  # the weights' epochs and calibration were chosen with those images
    assert entry["operating_point"]["threshold"] == op["threshold"]
    # A second run reads the cached logits and does not score the same file twice.
    r = run("operatingpoint", "--model", str(model), "--data", str(FIXTURES), "--out", str(tmp / "again.json"),
            "--logits", str(tmp / "logits.npz"), "--ledger", str(tmp / "ledger.jsonl"), "--date", "20261206",
            "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    assert "read from" in r.stderr and "not scored twice" in r.stderr
    assert len((tmp / "ledger.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp / "again.json").read_text()) == op


def test_the_derived_file_is_the_recorded_one_and_other_weights_are_refused(fitted, tmp_path):
    _, model, op_path, _ = fitted
    op = operatingpoint.read(op_path)
    derived = operatingpoint.derive(model, op_path, tmp_path / "derived.safetensors")
    assert file_sha256(derived) == op["model_sha256"]
    meta, weights = read_metadata(derived), read_metadata(model)
    assert meta.version == op["version"] and meta.threshold == op["threshold"]
    assert meta.weights_version == weights.version
    assert meta.calibration == weights.calibration and meta.tta == weights.tta
    assert meta.training["operating_point_file"]["sha256"] == operatingpoint.content_sha256(op)

    other = tmp_path / "other.safetensors"
    shutil.copyfile(model, other)
    from classifier.modelfile import replace_metadata

    replace_metadata(other, threshold=0.5)
    with pytest.raises(operatingpoint.OperatingPointError, match="fitted for weights"):
        operatingpoint.derive(other, op_path, tmp_path / "x.safetensors")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**op, "threshold": 0.3}))
    with pytest.raises(operatingpoint.OperatingPointError, match="does not hash"):
        operatingpoint.derive(model, tampered, tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists() and not list(tmp_path.glob("*.part"))
    for bad in ("{", json.dumps({"format": "other"}), json.dumps({**op, "threshold": 2})):
        tampered.write_text(bad)
        with pytest.raises(operatingpoint.OperatingPointError):
            operatingpoint.read(tampered)


def test_the_shipped_operating_point_makes_the_scored_file_from_the_shipped_weights(tmp_path):
    """What `make run` publishes: the starter's weights with the shipped operating point, a file whose
    sha256 has its entry in the locked test split's ledger (scored without the images that fitted it)."""
    op = operatingpoint.read(operatingpoint.DEFAULT_OPERATING_POINT_PATH)
    derived = operatingpoint.derive(DEFAULT_MODEL_PATH, operatingpoint.DEFAULT_OPERATING_POINT_PATH,
                                    tmp_path / "starter.safetensors")
    assert file_sha256(derived) == op["model_sha256"]
    entry = read_ledger()[op["model_sha256"]]
    assert entry["version"] == op["version"] and entry["operating_point_clean"]
    assert entry["operating_point"]["threshold"] == op["threshold"]
    assert op["threshold"] < read_metadata(DEFAULT_MODEL_PATH).threshold


# The registry, the worker and the demo ------------------------------------------------------------

@pytest.mark.django_db
def test_publish_with_an_operating_point_registers_its_own_version_and_predictions_use_it(fitted, settings):
    from django.core.management import call_command

    from skinweb.clinic import classification
    from skinweb.models_registry.models import ModelVersion
    from tests.builders import make_case, make_clinic, make_lesion, make_patient

    _, model, op_path, _ = fitted
    op = operatingpoint.read(op_path)
    call_command("publish_model", str(model))
    call_command("publish_model", str(model), operating_point=str(op_path))
    call_command("publish_model", str(model), operating_point=str(op_path))  # idempotent
    plain, derived = ModelVersion.objects.order_by("pk")
    assert (plain.status, derived.status) == ("retired", "published")
    assert derived.version == op["version"] and derived.threshold == op["threshold"]
    assert derived.sha256 == op["model_sha256"] == file_sha256(derived.path)
    assert derived.weights_sha256 == plain.sha256 == file_sha256(model)
    assert derived.operating_point["band"] == op["operating_point"]["band"]

    classification._predictors.clear()
    case = make_case(make_lesion(make_patient(make_clinic())))
    classification.classify_case(case.pk)
    case.refresh_from_db()
    p = case.prediction
    assert p.model_version == derived and p.threshold == op["threshold"]
    assert (p.band_low, p.band_high) == tuple(op["operating_point"]["band"])
    classification._predictors.clear()


@pytest.mark.django_db
def test_an_operating_point_for_other_weights_publishes_nothing(fitted, tmp_path):
    from django.core.management import CommandError, call_command

    from skinweb.models_registry.models import ModelVersion
    from tests.builders import make_model_file

    _, _, op_path, _ = fitted
    make_model_file(tmp_path / "other.safetensors")
    with pytest.raises(CommandError, match="fitted for weights"):
        call_command("publish_model", str(tmp_path / "other.safetensors"), operating_point=str(op_path))
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_the_demo_publishes_the_starter_with_its_operating_point_and_moves_an_older_install_to_it(settings):
    """A fresh `make run` publishes the derived starter; one that published the plain starter before moves
    to it on its next start; any other published version is left alone."""
    from django.core.management import call_command

    from skinweb.clinic.management.commands.demo import Command as DemoCommand
    from skinweb.models_registry.models import ModelVersion

    op = operatingpoint.read(operatingpoint.DEFAULT_OPERATING_POINT_PATH)
    call_command("publish_model", str(DEFAULT_MODEL_PATH))
    DemoCommand().publish_starter_model()
    published = ModelVersion.objects.published()
    assert published.version == op["version"] and published.sha256 == op["model_sha256"]
    assert "at least" in published.threshold_in_words and "choosing this threshold" in published.threshold_in_words
    DemoCommand().publish_starter_model()
    assert ModelVersion.objects.count() == 2


@pytest.mark.django_db
def test_the_model_page_states_the_figures_of_the_versions_own_threshold(client, settings):
    """The page's "at the threshold" row is this version's operating point (fitted on the selection images), not
    the weights' validation figures at their own threshold."""
    from django.urls import reverse

    from skinweb.models_registry.models import ModelVersion
    from tests.builders import make_user

    version = ModelVersion.import_file(DEFAULT_MODEL_PATH, operating_point=operatingpoint.DEFAULT_OPERATING_POINT_PATH)
    client.force_login(make_user("root", None, superuser=True))
    page = " ".join(client.get(reverse("manage:model_detail", args=[version.pk])).content.decode().split())
    op = version.operating_point
    assert f"sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f}" in page
    assert "at the weights' own threshold 0.184, not this version's" in page
