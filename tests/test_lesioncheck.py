"""The lesion check: "does not look like a dermoscopic image of a skin lesion", from the distance of an
image's features to the training images' (classifier.lesioncheck), stored in the model file, measured
by every runtime with the prediction, and shown with the result."""

import csv
import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch
from django.urls import reverse
from PIL import Image, ImageFilter

from classifier import Predictor, lesioncheck
from classifier.model import load_classifier
from classifier.modelfile import DEFAULT_MODEL_PATH, load_model_file, read_extra, read_metadata, save_model_file
from classifier.training import fastpath
from classifier.training import lesioncheck as lesionfit
from classifier.training.data import load_samples
from classifier.training.lesiongate import skin_closeups
from skinweb.clinic import classification, imagechecks
from skinweb.clinic.models import Case
from skinweb.models_registry.models import ModelVersion
from tests.conftest import FIXTURES, ROOT

CHECKSET = ROOT / "classifier" / "checkset"
NOT_LESIONS = ROOT / "tests" / "fixtures" / "not-lesions"


def test_distances_grow_away_from_the_training_features():
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 3.0, 16)  # unequal variances: the distance is in units of each direction's spread
    train = torch.from_numpy(rng.normal(size=(800, 16)) * scale).float()
    mean, precision = lesionfit.fit_statistics(train)
    check = lesioncheck.LesionCheck(mean, precision, cutoff=0.0)
    assert torch.allclose(precision, precision.T, atol=1e-4)
    near = check.distances(torch.from_numpy(rng.normal(size=(400, 16)) * scale).float())
    assert 3.0 < float(near.median()) < 5.0  # about sqrt(16) for data like the training data
    narrow, wide = torch.zeros(16), torch.zeros(16)
    narrow[0] = wide[-1] = 6.0  # far along the narrowest direction (sd 0.5), near along the widest (sd 3)
    assert float(check.distances(mean[None] + narrow)) > 5.0 > 2.5 > float(check.distances(mean[None] + wide))


@pytest.fixture(scope="module")
def checked(tmp_path_factory, model_file):
    """A copy of the test model with a lesion check fitted on the fixture images."""
    path = tmp_path_factory.mktemp("lesioncheck") / "m.safetensors"
    shutil.copyfile(model_file, path)
    args = lesionfit.get_args_parser().parse_args(["--model", str(path), "--data", str(FIXTURES)])
    assert lesionfit.main(args) == 0
    return path


def with_cutoff(path, cutoff):
    """Rewrite a model file's lesion-check cut-off (the statistics stay)."""
    model, meta = load_classifier(path)
    extra = {f"{lesioncheck.NAME}.{k}": v for k, v in read_extra(path, lesioncheck.NAME).items()}
    meta = dataclasses.replace(meta, version=f"{meta.version}-cutoff-{cutoff:g}",
                               lesion_check={**meta.lesion_check, "cutoff": cutoff})
    save_model_file(path, model, meta, extra=extra)
    return path


def test_the_check_is_stored_in_the_model_file_and_leaves_weights_and_version_alone(checked, model_file):
    before, meta_before = load_model_file(model_file)
    after, meta_after = load_model_file(checked)
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert meta_after.version == meta_before.version and meta_after.threshold == meta_before.threshold
    info = meta_after.lesion_check
    assert info["percentile"] == lesionfit.PERCENTILE and info["validation_images"] > 0 and info["cutoff"] > 0
    stats = read_extra(checked, lesioncheck.NAME)
    assert stats["mean"].shape == (512,) and stats["precision"].shape == (512, 512)
    assert lesioncheck.load(model_file, meta_before) is None  # a file without it: no check, no error


def test_predictions_carry_the_distance_and_the_cutoff(checked, model_file):
    images = sorted((FIXTURES / "images").iterdir())[:3]
    p = Predictor.from_file(checked, device="cpu", runtime="torch").predict(images)
    cutoff = read_metadata(checked).lesion_check["cutoff"]
    assert all(x.lesion_distance > 0 and x.lesion_cutoff == cutoff for x in p)
    assert [x.looks_like_lesion for x in p] == [x.lesion_distance <= cutoff for x in p]
    plain = Predictor.from_file(model_file, device="cpu", runtime="torch").predict(images)
    assert [x.probability for x in plain] == [x.probability for x in p]  # the check changes no score
    assert all(x.lesion_distance is None and x.looks_like_lesion is None for x in plain)


def test_every_runtime_measures_the_same_distance(checked, tmp_path):
    path = tmp_path / "m.safetensors"
    shutil.copyfile(checked, path)
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    fastpath.build_artefacts(path, inputs, batch_size=4, int8="always")
    batch = inputs.validation[:6]
    reference = Predictor.from_file(path, device="cpu", runtime="torch").assess(batch)[1]
    # int8 rounds the features too (this random 64 px model's int8 copy even fails the guard): near, not equal.
    for runtime, tolerance in (("onnx-fp32", 1e-3), ("onnx-int8", 0.3), ("onnx-int8-recheck", 0.3)):
        distances = Predictor.from_file(path, device="cpu", runtime=runtime).assess(batch)[1]
        assert distances is not None, runtime
        np.testing.assert_allclose(distances, reference, rtol=tolerance, err_msg=runtime)


@pytest.mark.django_db
def test_the_worker_stores_the_check_and_the_pages_show_its_warning(client, alice, checked, tmp_path):
    from tests.builders import make_case, make_lesion, make_patient

    strict = with_cutoff(shutil.copyfile(checked, tmp_path / "strict.safetensors"), 0.0)  # nothing passes it
    version = ModelVersion.import_file(strict)
    version.publish(reason="test")
    case = make_case(make_lesion(make_patient(alice.clinic, "DERM-5")), alice)
    classification.classify_case(case.pk)
    case = Case.objects.get(pk=case.pk)
    assert case.prediction.lesion_distance > 0 and case.prediction.lesion_cutoff == 0.0
    assert case.prediction.unlike_lesion and case.warnings[-1] == imagechecks.UNLIKE_LESION
    assert imagechecks.UNLIKE_LESION not in case.image_warnings  # the upload's own checks are kept apart
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert imagechecks.UNLIKE_LESION in page
    assert "check image" in client.get(reverse("clinic:case_list")).content.decode()
    rows = list(csv.DictReader(io.StringIO(
        b"".join(client.get(reverse("clinic:case_export")).streaming_content).decode())))
    assert imagechecks.UNLIKE_LESION in rows[0]["image_warnings"]
    assert client.get(reverse("clinic:case_report", args=[case.pk])).status_code == 200

    lenient = with_cutoff(shutil.copyfile(checked, tmp_path / "lenient.safetensors"), 1e9)
    lenient_version = ModelVersion.import_file(lenient)
    lenient_version.publish(reason="test")
    other = make_case(case.lesion, alice)
    classification.classify_case(other.pk)
    other = Case.objects.get(pk=other.pk)
    assert other.prediction.lesion_distance is not None and not other.prediction.unlike_lesion
    assert imagechecks.UNLIKE_LESION not in other.warnings


# The shipped model on real and unreal pictures: each image's features as the worker measures them.
def _warnings(predictor, images: list[Image.Image]) -> list[list[str]]:
    batch = predictor.preprocess(images)
    distances = predictor.lesion_check.distances(torch.cat([predictor.runner.both(b)[1] for b in batch.split(16)]),
                                                 batch)
    return [imagechecks.check(img) + ([imagechecks.UNLIKE_LESION] if d > predictor.lesion_check.cutoff else [])
            for img, d in zip(images, distances.tolist())]


@pytest.fixture(scope="module")
def starter():
    predictor = Predictor.from_file(DEFAULT_MODEL_PATH, device="cpu", runtime="torch")
    assert predictor.lesion_check is not None, "the shipped model carries its lesion check"
    return predictor


def _open(path):
    with Image.open(path) as img:
        return img.convert("RGB")


def test_the_shipped_model_warns_on_pictures_that_are_not_dermoscopic_lesions(starter):
    lesion = _open(CHECKSET / "images" / "ISIC_0000002.jpg")
    blank = Image.new("RGB", (600, 450), (222, 196, 170))  # a blank beige picture
    cat, coffee = _open(NOT_LESIONS / "chelsea.jpg"), _open(NOT_LESIONS / "coffee.jpg")
    blurred = lesion.filter(ImageFilter.GaussianBlur(8))
    found = dict(zip(["lesion", "blank", "cat", "coffee", "blurred"],
                     _warnings(starter, [lesion, blank, cat, coffee, blurred])))
    assert found["lesion"] == []
    assert found["cat"] == found["coffee"] == [imagechecks.UNLIKE_LESION]  # sharp, well exposed: only this check
    # A uniform skin-coloured picture: the upload's own check catches it (the distance check alone did not: it is
    # close to the average lesion in the model's features), and the lesion gate now too.
    assert found["blank"] == [imagechecks.UNIFORM, imagechecks.UNLIKE_LESION]
    assert "blurred" in found["blurred"]


def test_real_lesions_rarely_warn(starter):
    """The issue's bar: no warning on at least 98% of validation images (the shipped check set's 256)."""
    val = [s for s in load_samples(CHECKSET) if s.split == "val"]
    warned = [s.path.name for s, w in zip(val, _warnings(starter, [_open(s.path) for s in val])) if w]
    assert len(val) == 256 and len(warned) <= 0.02 * len(val), warned


def test_the_shipped_model_withholds_a_spot_on_skin_photographed_without_a_dermatoscope(starter):
    """Close crops of the portraits' skin with a drawn brown spot, which the gate's fit never sees: the nearest
    thing to a clinical close-up of a lesion that ships here (docs/benchmarks.md has the plain skin's figure)."""
    pictures = skin_closeups()
    assert len(pictures) == 14
    spotted = [name for name in pictures if name.endswith("with a spot")]
    found = dict(zip(pictures, _warnings(starter, [img for _, img in pictures.values()])))
    assert all(imagechecks.UNLIKE_LESION in found[name] for name in spotted), found
