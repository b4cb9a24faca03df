"""A differential that says how sure it is (issue 43, item 3): calibrated on held-out images, never shown as
0% or 100%, and a note where it and the malignancy decision point different ways."""

import numpy as np
import pytest

from classifier import differential
from classifier.reference import CLASSES
from classifier.training import differential as fitting


def overconfident(n=3000, seed=0):
    """Logits of a head three times too sure of itself, leaning towards the last class by one logit."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, len(CLASSES)))
    p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
    y = np.array([rng.choice(len(CLASSES), p=row) for row in p])
    logits = 3.0 * true
    logits[:, -1] += 1.0
    return logits, y


def test_the_calibration_finds_the_temperature_and_the_lean_and_lowers_the_error():
    logits, y = overconfident()
    fitted = fitting.fit_calibration(logits, y)
    assert fitted["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fitted["offsets"][-1] == pytest.approx(min(fitted["offsets"]), abs=1e-9)  # the lean taken back
    report = fitting.calibrate(logits, y, groups=range(len(y)))
    assert report["ece_before"] > 0.2 and report["ece_after_cross_fitted"] < 0.05
    assert report["largest_shown_after"] < differential.calibrated(logits, None).max()


def test_a_head_file_with_a_malformed_calibration_is_refused(tmp_path):
    d = len(CLASSES)
    model = tmp_path / "m.safetensors"
    for bad in ({"temperature": -1}, {"temperature": 1.0, "offsets": [0.0]}, "x"):
        differential.save(differential.head_path(model), np.zeros((d, 4)), np.zeros(d), np.zeros(4), np.ones(4),
                          {"model_version": "v", "calibration": bad})
        with pytest.raises(differential.DifferentialError, match="calibration"):
            differential.load(model, "v")
    differential.save(differential.head_path(model), np.zeros((d, 4)), np.arange(d, dtype=float), np.zeros(4),
                      np.ones(4), {"model_version": "v", "calibration": {"temperature": 2.0, "offsets": [0.0] * d}})
    head = differential.load(model, "v")
    plain = np.exp(np.arange(d) / 2.0) / np.exp(np.arange(d) / 2.0).sum()
    np.testing.assert_allclose(head.probabilities(np.zeros((1, 4)))[0], plain)


def test_shown_percentages_never_say_certain():
    from skinweb.clinic.similar import shown_percent

    assert [shown_percent(p) for p in (0.0, 0.004, 0.01, 0.5, 0.994, 1.0)] == ["<1%", "<1%", "1%", "50%", ">99%",
                                                                              ">99%"]


@pytest.mark.django_db
def test_a_note_when_the_differential_and_the_decision_disagree():
    from skinweb.clinic.models import Prediction
    from skinweb.clinic.similar import differential_disagreement

    def prediction(decision, top):
        return Prediction(decision=decision, differential={top: 0.7, "nevus" if top != "nevus" else "melanoma": 0.3})

    assert differential_disagreement(prediction("benign", "nevus")) == ""
    assert differential_disagreement(prediction("malignant", "basal_cell_carcinoma")) == ""
    assert "melanoma, is malignant, while the decision at the threshold is benign" in differential_disagreement(
        prediction("benign", "melanoma"))
    assert "is benign, while the decision at the threshold is malignant" in differential_disagreement(
        prediction("malignant", "nevus"))


def test_a_temperature_alone_keeps_every_images_ranking_of_the_classes():
    logits, y = overconfident(seed=1)
    alone = fitting.calibrate(logits, y, groups=range(len(y)), offsets=False)
    assert alone["method"] == "temperature" and alone["offsets"] == [0.0] * len(CLASSES)
    assert alone["temperature"] > 2 and alone["balanced_accuracy_after"] == alone["balanced_accuracy_before"]
    assert alone["ece_after_cross_fitted"] < alone["ece_before"]
