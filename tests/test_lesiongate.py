"""The lesion gate (issue 43): trained against pictures that are not dermoscopic lesions, beside the weights,
used by the worker in the distance check's place, carried with the weights to a derived model file."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import lesiongate
from classifier.predictor import Predictor
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def gated(tmp_path_factory, model_file):
    """The test model with a gate fitted by the command (few views: the mechanics, not the figures)."""
    path = tmp_path_factory.mktemp("gate") / "m.safetensors"
    shutil.copyfile(model_file, path)
    r = subprocess.run([sys.executable, "-m", "classifier.training.lesiongate", "--model", str(path), "--data",
                        str(FIXTURES), "--views", "2", "--close-views", "1", "--train-images", "8"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return path, json.loads(r.stdout)


def test_the_command_writes_a_gate_with_its_held_out_figures(gated):
    path, printed = gated
    body = json.loads(lesiongate.gate_path(path).read_text())
    assert body["format"] == lesiongate.FORMAT and body["weights_version"] == "test-vgg16-64px"
    figures = body["figures"]
    kept = ("other_pictures_held_out", "skin_closeups_held_out", "validation_lesions")
    assert figures == {k: printed[k] for k in kept}
    held = figures["other_pictures_held_out"]
    close = [c for c in held["per_category"] if c.endswith(", close crop")]
    assert held["pictures"] > 80 and held["views"] > 2 * held["pictures"] and {"photograph, close crop"} <= set(close)
    assert {"face", "document", "photograph", "skin without a dermatoscope (synthetic)"} <= set(held["per_category"])
    assert 0 <= held["whole_views_share_withheld"] <= 1 and 0 <= held["close_crops_share_withheld"] <= 1
    # The portraits' skin, each scored by the gate fitted without its portrait (the fixtures' few lesions here).
    closeups = figures["skin_closeups_held_out"]
    assert closeups["n"] == 14 and closeups["withheld"] == closeups["plain_withheld"] + closeups["with_a_spot_withheld"]
    lesions = figures["validation_lesions"]
    assert set(lesions["per_source"]) and 0 <= lesions["share_withheld"] <= 1


def test_the_worker_decides_with_the_gate_where_the_weights_have_one(gated):
    path, _ = gated
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    gate = predictor.lesion_check
    assert isinstance(gate, lesiongate.LesionGate)
    batch = predictor.preprocess(sorted((FIXTURES / "images").iterdir())[:3])
    _, distances, _, _ = predictor.assess(batch)
    features = predictor.runner.both(batch)[1].float().numpy()
    statistics = lesiongate.picture_statistics(batch, predictor.metadata.mean, predictor.metadata.std)
    np.testing.assert_allclose(distances, gate.scores(features, statistics), rtol=1e-5)
    assert torch.is_tensor(gate.distances(torch.from_numpy(features), batch))
    with pytest.raises(ValueError, match="statistics"):
        gate.scores(features)


def test_a_picture_outside_the_lesions_envelope_is_withheld_whatever_the_regression_says(gated):
    """A solid colour and noise lie outside the range every training lesion takes on the picture statistics."""
    path, _ = gated
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    gate = predictor.lesion_check
    rng = np.random.default_rng(0)
    pictures = [Image.new("RGB", (300, 300), (0, 0, 255)), Image.fromarray(rng.integers(0, 256, (300, 300, 3),
                                                                                        dtype=np.uint8))]
    batch = predictor.preprocess(pictures)
    statistics = gate.statistics(batch)
    assert (gate.outside(statistics) > 0).all()
    assert (gate.distances(predictor.runner.both(batch)[1], batch).numpy() > gate.cutoff).all()
    lesions = predictor.preprocess(sorted((FIXTURES / "images").iterdir())[:8])
    assert (gate.outside(gate.statistics(lesions)) < 0).mean() >= 0.75  # the fixtures: a few of the training lesions


def test_a_gate_of_the_first_format_still_reads_features_alone(gated, tmp_path):
    path, _ = gated
    copy = tmp_path / "m.safetensors"
    shutil.copyfile(path, copy)
    body = json.loads(lesiongate.gate_path(path).read_text())
    k = len(lesiongate.STATISTICS)
    old = {**{key: v for key, v in body.items() if key != "statistics"}, "format": "skinweb-lesion-gate/1",
           **{key: body[key][:-k] for key in ("mean", "scale", "weight")}}
    lesiongate.gate_path(copy).write_text(json.dumps(old))
    gate = lesiongate.load(copy, "test-vgg16-64px")
    assert not gate.uses_statistics and gate.scores(np.zeros((2, len(old["mean"])))).shape == (2,)


def test_a_gate_for_other_weights_or_a_broken_one_is_not_used(gated, tmp_path):
    path, _ = gated
    copy = tmp_path / "m.safetensors"
    shutil.copyfile(path, copy)
    body = json.loads(lesiongate.gate_path(path).read_text())
    statistics = body["statistics"]
    broken_envelope = {**body, "statistics": {**statistics, "envelope_high": statistics["envelope_low"]}}
    other_statistics = {**body, "statistics": {**body["statistics"], "names": ["hue"]}}
    for bad in ({**body, "weights_version": "other"}, {**body, "scale": [0.0] * len(body["scale"])}, {"format": "x"},
                broken_envelope, other_statistics):
        lesiongate.gate_path(copy).write_text(json.dumps(bad))
        with pytest.raises(lesiongate.GateError):
            lesiongate.load(copy, "test-vgg16-64px")
        assert not isinstance(Predictor.from_file(copy, device="cpu", runtime="torch").lesion_check,
                              lesiongate.LesionGate)


@pytest.mark.django_db
def test_the_gate_travels_with_the_weights_into_the_registry(gated, settings):
    from skinweb.models_registry.models import ModelVersion

    path, _ = gated
    version = ModelVersion.import_file(path)
    assert lesiongate.gate_path(version.path).read_text() == lesiongate.gate_path(path).read_text()
    assert version.lesion_gate["threshold"] == lesiongate.load(path, "test-vgg16-64px").cutoff


@pytest.mark.django_db
def test_the_model_page_states_the_gate_s_figures_and_what_it_was_not_measured_on(gated, client, root):
    from django.urls import reverse

    from skinweb.models_registry.models import ModelVersion

    path, printed = gated
    version = ModelVersion.import_file(path)
    client.force_login(root)
    page = client.get(reverse("manage:model_detail", args=[version.pk])).content.decode()
    closeups = printed["skin_closeups_held_out"]
    assert f"{closeups['withheld']} of {closeups['n']} withheld" in page
    assert "Real clinical close-ups of lesions were not among the pictures it was measured on." in page
