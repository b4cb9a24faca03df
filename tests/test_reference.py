"""The reference library and the differential without the web application (issue 32): the fit, the
command that prints the figures, and evaluate's report. No database: these run once, on SQLite's pass."""

import json
import subprocess
import sys

import numpy as np

from classifier import differential, reference
from classifier.modelfile import replace_metadata
from classifier.predictor import Predictor
from classifier.training.data import load_samples
from tests.builders import make_model_file
from tests.conftest import FIXTURES


def test_the_differential_head_is_sklearn_s_multinomial_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from classifier.differential import Differential
    from classifier.training.differential import fit_head

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 400)
    x = rng.normal(size=(400, 16)) + np.eye(7, 16)[y] * 2
    ours = Differential(*fit_head(x, y, 0.1, 7), reference.CLASSES, {}).probabilities(x)
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    theirs = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(z, y).predict_proba(z)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    np.testing.assert_allclose(ours.sum(1), 1, atol=1e-9)


def test_exact_search_returns_the_k_most_similar_allowed_rows_best_first():
    rng = np.random.default_rng(1)
    library = reference.normalise(rng.normal(size=(50, 8)))
    query = library[7] + 0.01 * rng.normal(size=8)
    found, sims = reference.nearest(query, library, 5)
    expected = np.argsort(-(library @ reference.normalise(query)[0]))[:5]
    assert found.tolist() == expected.tolist() and found[0] == 7 and (np.diff(sims) <= 0).all()
    allowed = np.ones(50, bool)
    allowed[7] = False
    assert 7 not in reference.nearest(query, library, 5, allowed)[0]
    assert len(reference.nearest(query, library, 5, np.zeros(50, bool))[0]) == 0
    blob = reference.encode(library[0])
    assert len(blob) == 16 and np.allclose(reference.decode(blob), library[0], atol=1e-3)
    assert reference.decode(b"") is None and reference.decode(b"abc") is None


def test_the_differential_command_and_evaluate_report_the_figures_per_source(tmp_path):
    """The command embeds the dataset on the worker's path (--build-index), fits the head on the model's
    training images and prints the figures; evaluate reports them on any set with diagnoses."""
    model = tmp_path / "m.safetensors"
    make_model_file(model)
    # 12 images: half to validation, so that some lie outside the locked split.
    replace_metadata(model, training={"recipe": {"val_fraction": 0.5}})
    out = subprocess.run([sys.executable, "-m", "classifier.training.differential", "--model", str(model), "--data",
                          str(FIXTURES), "--build-index", "--device", "cpu"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["model_version"] == "test-vgg16-64px" and set(report["per_source"]) <= {"isic2017", "kaggle180"}
    assert 0 <= report["retrieval_precision_at_8"] <= 1 and "balanced_accuracy" in report["validation"]
    index = reference.load(reference.index_path(model), "test-vgg16-64px")
    assert len(index.keys) == 12 and index.meta["runtime"] == "torch"
    # The library's embeddings are the worker's: the same as a prediction's of the same image.
    predictor = Predictor.from_file(model, device="cpu", runtime="torch")
    first = predictor.assess(predictor.preprocess([FIXTURES / index.keys[0]])).embeddings[0].numpy()
    np.testing.assert_allclose(index.raw[0].astype(np.float32), first, rtol=2e-3, atol=1e-3)
    assert predictor.differential is not None and predictor.differential.meta["model_version"] == "test-vgg16-64px"

    out = subprocess.run([sys.executable, "-m", "classifier.training.evaluate", "--model", str(model), "--data",
                          str(FIXTURES), "--bootstrap", "10", "--device", "cpu"], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    assert result["differential"]["n"] == 12 and "melanoma" in result["differential"]["auc"]
    assert set(result["retrieval"]["per_source"]) == {"isic2017", "kaggle180"}
    assert len(load_samples(FIXTURES)) == 12


def test_a_head_of_another_version_or_of_bad_shape_is_refused(tmp_path):
    model = tmp_path / "m.safetensors"
    make_model_file(model)
    d = 512
    differential.save(differential.head_path(model), np.zeros((7, d)), np.zeros(7), np.zeros(d), np.ones(d),
                      {"model_version": "test-vgg16-64px"})
    head = differential.load(model, "test-vgg16-64px")
    np.testing.assert_allclose(head.probabilities(np.ones((2, d))), 1 / 7)
    for meta, scale in (({"model_version": "other"}, np.ones(d)), ({"model_version": "test-vgg16-64px"}, np.zeros(d))):
        differential.save(differential.head_path(model), np.zeros((7, d)), np.zeros(7), np.zeros(d), scale, meta)
        try:
            differential.load(model, "test-vgg16-64px")
        except differential.DifferentialError:
            continue
        raise AssertionError(f"accepted {meta}, scale {scale[0]}")
