"""Early decisions (classifier.cascade): the fit, the rule on precomputed and live logits, the model file."""

import dataclasses

import numpy as np
import pytest
import torch

from classifier import Predictor
from classifier.cascade import Cascade, band_logits
from classifier.model import load_classifier
from classifier.modelfile import ModelFileError, read_metadata, replace_metadata, save_model_file
from classifier.predictor import threshold_logit
from classifier.presets import dihedral
from classifier.training import cascade as fitting
from classifier.training import fastpath
from tests.conftest import FIXTURES


def residual_logits(n=400, seed=0):
    """(n, 8) logits: an image's mean spread over a wide range, each view off it by a little."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (n, 1)) + rng.normal(0, 0.6, (n, 8))


CALIBRATION = {"scale": 0.5, "bias": -1.0}


def test_the_margins_hold_every_validation_image_and_nothing_changes_where_fitted():
    z = residual_logits()
    record = fitting.fit(z, CALIBRATION, 0.2, [0.05, 0.4])
    for margin, score in zip(record["margins"], fitting.scores(z, record["order"], record["stages"],
                                                               record["alpha"], record["beta"])):
        assert score.max() <= margin < score.max() + 2e-6  # the largest score, rounded up
    assert record["band_margins"] == record["margins"]  # band_quantile 1.0: the same bound
    fitted = record["validation"]
    assert fitted["decisions_changed"] == 0 and fitted["bands_changed"] == 0
    assert 1 <= fitted["mean_views"] < 8 and sum(fitted["stopped_at"].values()) == pytest.approx(1)
    looser = fitting.fit(z, CALIBRATION, 0.2, [0.05, 0.4], band_quantile=0.9)
    assert looser["validation"]["decisions_changed"] == 0
    assert looser["validation"]["mean_views"] <= fitted["mean_views"]


def test_an_image_stops_only_when_every_edge_is_beyond_the_stage_s_margin():
    cascade = Cascade(stages=(1, 8), margins=(1.0,), band_margins=(1.0,), order=tuple(range(8)), threshold=0.0,
                      band=(-2.0, 3.0))
    z = np.zeros((5, 8))
    z[:, 0] = [-3.5, -1.5, 1.2, 4.5, 2.5]  # the upright view; the others average to 0.5 below it
    z[:, 1:] = z[:, :1] - 0.5 * 8 / 7
    logits, used = cascade.decide_from_views(z)
    assert used.tolist() == [1, 8, 1, 1, 8]  # -1.5 is 0.5 from -2; 2.5 is 0.5 from 3
    assert logits[0] == -3.5 and logits[1] == pytest.approx(z[1].mean())
    assert cascade.widened(0.3).decide_from_views(z)[1].tolist() == [1, 8, 8, 1, 8]  # 1.2 is 1.2 from 0
    # The scale grows with the running mean: at alpha 0.5, -3.5 needs 2 + 0.5 * 3.5 ... from -2.
    assert dataclasses.replace(cascade, alpha=0.5).decide_from_views(z)[1].tolist() == [8, 8, 8, 8, 8]
    # The threshold and the band ends have margins of their own.
    assert dataclasses.replace(cascade, band_margins=(0.4,)).decide_from_views(z)[1].tolist() == [1, 1, 1, 1, 1]


def test_training_fits_a_cascade_only_for_a_model_that_averages_its_views():
    from classifier.training import validation

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    steady = np.repeat((y * 2.0 - 1 + rng.normal(0, 1, 300))[:, None], 8, axis=1)  # no view changes anything
    samples = [type("S", (), {"source": "x", "diagnosis": "", "group": str(i)})() for i in range(300)]
    assert validation.choose_and_report(y, steady, samples, n_boot=10)["cascade"] == {}
    shaky = steady + rng.normal(0, 1.5, (300, 8))  # single views flip: the model averages them
    report = validation.choose_and_report(y, shaky, samples, n_boot=10)
    assert report["tta"] == "dihedral8" and report["cascade"]["stages"][-1] == 8
    assert report["cascade"]["validation"]["decisions_changed"] == 0


@pytest.fixture(scope="module")
def averaged_model(tmp_path_factory, model_file):
    """The test model averaging 8 views, its threshold at the fixture images' median, and a cascade
    whose margins stop some of the 12 images early and not others."""
    from classifier.training.data import load_samples

    model, meta = load_classifier(model_file)
    path = tmp_path_factory.mktemp("cascade") / "d8.safetensors"
    save_model_file(path, model, dataclasses.replace(meta, tta="dihedral8"))
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    images = predictor.preprocess([s.path for s in load_samples(FIXTURES)])
    z = predictor.view_logits(images).numpy()
    means = z.mean(1)
    scale = float(4.0 / (means.max() - means.min()))  # the images' means span 4 units of calibrated logit
    calibration = {"scale": scale, "bias": -scale * float(np.median(means))}
    band = [0.3, 0.7]
    record = fitting.fit(z, calibration, 0.5, band)
    # Margins that stop about half the undecided images at each stage (the fitted ones, on a randomly
    # initialised network whose views barely differ, would stop them all at once).
    edges = np.array(fitting.edges_for(calibration, 0.5, band))
    ordered = z[:, record["order"]]
    distance = [np.abs(ordered[:, :v].mean(1)[:, None] - edges).min(1) for v in record["stages"][:-1]]
    record.update(alpha=0.0, beta=0.0)
    record["margins"] = record["band_margins"] = [float(np.quantile(d, q)) for d, q in
                                                  zip(distance, (0.5, 0.6, 0.7, 0.8))]
    replace_metadata(path, calibration=calibration, threshold=0.5, operating_point={"band": band}, cascade=record)
    return path, images, z


def test_the_live_rule_stops_the_same_images_with_the_same_logits_as_the_rule_on_all_views(averaged_model):
    path, images, z = averaged_model
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    meta = read_metadata(path)
    band = band_logits(meta.operating_point["band"], meta.calibration)
    assert predictor.cascade is not None and predictor.cascade.band == band
    assert predictor.cascade.threshold == pytest.approx(threshold_logit(meta))
    expected, expected_views = predictor.cascade.decide_from_views(z)
    live, views = predictor.cascade.run(predictor.runner, images)
    assert views.tolist() == expected_views.tolist()
    assert len(set(views.tolist())) > 1, "the fixture should have early and late images"
    np.testing.assert_allclose(live.numpy(), expected, atol=1e-5)
    # An image that ran every view has exactly the full average.
    full = views == 8
    np.testing.assert_allclose(live[full].numpy(), z[full.numpy()].mean(1), atol=1e-5)


def test_the_embedding_averages_the_features_of_the_views_the_decision_averaged(averaged_model):
    """Issue 32: the retrieval embedding follows the decision's views, early or not."""
    from classifier.presets import dihedral

    path, images, _ = averaged_model
    for early in (True, False):
        predictor = Predictor.from_file(path, device="cpu", runtime="torch", early=early)
        _, _, views, embeddings = predictor.assess(images)
        order = predictor.cascade.order if early else tuple(range(8))
        per_view = torch.stack([predictor.runner.both(dihedral(images, k))[1] for k in order], 1)
        expected = torch.stack([per_view[i, :v].mean(0) for i, v in enumerate(views)])
        assert embeddings.shape == (len(images), 512)
        torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
        assert (len(set(views)) > 1) == early


def test_the_worker_s_prediction_records_how_many_views_it_averaged(averaged_model):
    path, images, _ = averaged_model
    early = Predictor.from_file(path, device="cpu", runtime="torch")
    every = Predictor.from_file(path, device="cpu", runtime="torch", early=False)
    p_early, _, views, _ = early.assess(images)
    p_all, _, all_views, _ = every.assess(images)
    assert set(all_views) == {8} and min(views) < 8
    band = read_metadata(path).operating_point["band"]
    side = lambda p: np.digitize(p, [band[0], 0.5, band[1]])  # noqa: E731
    assert (side(np.array(p_early)) == side(np.array(p_all))).all()


def test_a_runner_is_called_only_for_the_images_still_undecided(averaged_model):
    path, images, _ = averaged_model
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    seen = []

    def counting(batch):
        seen.append(len(batch))
        return predictor.runner(batch)

    _, views = predictor.cascade.run(counting, images)
    assert sum(seen) == int(views.sum())  # one forward pass per view an image used, none wasted


def test_a_malformed_cascade_is_refused_when_the_file_is_read(averaged_model, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(averaged_model[0].read_bytes())
    spec = read_metadata(path).cascade
    for bad in ({**spec, "stages": [2, 1, 8]}, {**spec, "margins": [1.0]}, {**spec, "order": [1, 0, 2, 3, 4, 5, 6, 7]},
                {**spec, "band_margins": [-1.0, *spec["margins"][1:]]}, {**spec, "stages": [1, 2, 4]},
                {**spec, "margins": [float("nan"), *spec["margins"][1:]]}, {**spec, "alpha": -0.1}):
        replace_metadata(path, cascade=bad)  # writes what it is given; reading it back checks it
        with pytest.raises(ModelFileError, match="cascade"):
            read_metadata(path)
        path.write_bytes(averaged_model[0].read_bytes())


def test_dihedral_order_is_honoured(averaged_model):
    """Stage 2 of order (0, 6, ...) averages the upright view and dihedral view 6."""
    path, images, z = averaged_model
    cascade = Cascade(stages=(2, 8), margins=(0.0,), band_margins=(0.0,), order=(0, 6, 1, 7, 2, 4, 3, 5),
                      threshold=1e9)
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    live, views = cascade.run(predictor.runner, images)
    assert set(views.tolist()) == {2}
    expected = (predictor.runner(images) + predictor.runner(dihedral(images, 6))) / 2
    np.testing.assert_allclose(live.numpy(), expected.numpy(), atol=1e-5)
    assert torch.is_tensor(live)


def test_a_stop_on_logits_within_the_error_bound_is_a_stop_on_the_exact_logits_with_the_same_result():
    """The int8 path: every view's logit may be ``error`` off. Where the widened rule stops an image on
    such logits, the rule on the exact logits has stopped it by then too, and the result lies on the
    same side of every edge as the exact full average."""
    z = residual_logits(2000, seed=3)
    record = fitting.fit(z, CALIBRATION, 0.2, [0.05, 0.4])
    exact = Cascade.from_spec(record, fitting.probability_to_logit(0.2, CALIBRATION),
                              band_logits([0.05, 0.4], CALIBRATION))
    rng = np.random.default_rng(4)
    error = 0.7
    noisy = z + rng.uniform(-error, error, z.shape)
    fast_logits, fast_used = exact.widened(error).decide_from_views(noisy)
    exact_logits, exact_used = exact.decide_from_views(z)
    full = z.mean(1)
    edges = np.array(sorted({exact.threshold, *exact.band}))
    stopped = fast_used < 8
    assert stopped.any() and (exact_used[stopped] <= fast_used[stopped]).all()
    assert ((fast_logits[stopped, None] >= edges).sum(1) == (full[stopped, None] >= edges).sum(1)).all()
    assert exact.widened(error).decide_from_views(noisy)[1].mean() > exact.decide_from_views(noisy)[1].mean()


def test_a_fast_path_report_guarded_under_another_cascade_is_not_used(averaged_model, tmp_path):
    import json

    from classifier.artefacts import REPORT_FORMAT, artefact_paths, cascade_key, read_report

    path = tmp_path / "m.safetensors"
    path.write_bytes(averaged_model[0].read_bytes())
    meta = read_metadata(path)
    report = {"format": REPORT_FORMAT, "views": 8, "cascade": cascade_key(meta), "chosen": "onnx-fp32"}
    artefact_paths(path)["report"].write_text(json.dumps(report))
    assert read_report(path) is not None
    replace_metadata(path, cascade={**meta.cascade, "margins": [m * 2 for m in meta.cascade["margins"]]})
    assert read_report(path) is None  # the cascade was refitted: the guard decided otherwise
    replace_metadata(path, cascade={})
    assert read_report(path) is None  # no cascade now: the worker would run every view


def test_the_recheck_reruns_the_exact_runner_s_own_cascade(averaged_model):
    from classifier.runtime import Recheck

    path, images, _ = averaged_model
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    cascade = predictor.cascade
    everything = torch.full((len(images),), cascade.threshold)  # every image lies on the threshold: all rerun
    recheck = Recheck(predictor.runner, cascade.threshold, 1.0, 8, cascade=cascade)
    logits, rerun, views, _ = recheck.rerun(images, everything)
    expected, expected_views = cascade.run(predictor.runner, images)
    assert rerun.tolist() == list(range(len(images))) and views.tolist() == expected_views.tolist()
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-6)


def test_the_int8_path_decides_early_on_widened_margins_and_reruns_the_borderline_with_the_fp32_cascade(
        averaged_model, tmp_path):
    """Built artefacts, as a worker loads them: int8's cascade allows for the build's error bound, the
    recheck's runner is fp32 with the exact cascade, and every image records the views it averaged."""
    from classifier.artefacts import read_report

    path = tmp_path / "m.safetensors"
    path.write_bytes(averaged_model[0].read_bytes())
    images = averaged_model[1]
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    report = fastpath.build_artefacts(path, inputs, batch_size=4, int8="always")
    assert report["cascade"]["margins"] == read_metadata(path).cascade["margins"] and read_report(path)
    # The guard records how each runtime's embeddings retrieve against fp32's (issue 32).
    for name in ("onnx-fp32", "onnx-int8", "onnx-int8-recheck"):
        entry = report["runtimes"][name]
        assert 0 <= entry["retrieval_overlap_min"] <= entry["retrieval_overlap_at_k"] <= 1, (name, entry)
    assert report["runtimes"]["onnx-fp32"]["embedding_cosine_min"] > 0.9999
    int8 = Predictor.from_file(path, device="cpu", runtime="onnx-int8-recheck")
    margin = report["runtimes"]["onnx-int8-recheck"]["recheck_margin"]
    assert int8.cascade.error == margin and int8.recheck.cascade.error == 0.0
    int8.recheck.low, int8.recheck.high = -1e9, 1e9  # every image rerun: the fp32 cascade decides all
    probs, _, views, embeddings = int8.assess(images)
    exact = Predictor.from_file(path, device="cpu", runtime="onnx-fp32")
    expected, _, expected_views, expected_embeddings = exact.assess(images)
    assert views == expected_views
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    # The rerun images' embeddings are the exact runner's too, over the same views.
    torch.testing.assert_close(embeddings, expected_embeddings, atol=1e-5, rtol=1e-5)
    # Without the rerun, int8's own early decisions: never on fewer views than fp32's cascade needs here.
    alone = Predictor.from_file(path, device="cpu", runtime="onnx-int8")
    assert alone.cascade.error == margin and sum(alone.assess(images)[2]) >= sum(expected_views)


def test_calibrate_cascade_only_fits_the_cascade_and_keeps_the_operating_point(averaged_model, tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "m.safetensors"
    path.write_bytes(averaged_model[0].read_bytes())
    replace_metadata(path, cascade={})
    before = read_metadata(path)
    result = subprocess.run([sys.executable, "-m", "classifier.training.calibrate", "--cascade-only", "--model",
                             str(path), "--data", str(FIXTURES), "--check", str(FIXTURES), "--batch-size", "4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    after = read_metadata(path)
    assert json.loads(result.stdout)["cascade"] == after.cascade
    assert after.cascade["validation"]["decisions_changed"] == 0 and after.cascade["check"]["images"] == 12
    assert (after.threshold, after.calibration, after.operating_point, after.version) == (
        before.threshold, before.calibration, before.operating_point, before.version)


def test_the_gpu_guard_decides_early_on_each_precision_s_own_widened_margins(averaged_model, tmp_path, monkeypatch):
    """check_cuda's bookkeeping with a cascade, run on the CPU (autocast is off there, so each precision's
    error is 0): each CUDA runtime records the margin its early decisions are widened by, and the worker
    reads it back; a report without one leaves that runtime no early decisions."""
    import json
    import math

    from classifier.artefacts import REPORT_FORMAT, artefact_paths, cascade_key
    from classifier.runtime import CUDA_DTYPES

    path, images, _ = averaged_model
    monkeypatch.setattr(fastpath, "measure_speed", lambda *args, **kwargs: 1.0)  # timing is not what this checks
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    inputs = fastpath.BuildInputs(calibration=images[:4], validation=images, validation_labels=np.arange(12) % 2,
                                  description="fixture")
    decided = fastpath.decide(predictor.runner, images, 4, 8, cascade=predictor.cascade)
    reference = torch.sigmoid(decided.logits).numpy()
    runtimes = {}
    fastpath.check_cuda(predictor.runner.model, inputs, reference, inputs.validation_labels, 0.5, runtimes,
                        batch_size=4, device=torch.device("cpu"), views=8, cascade=predictor.cascade)
    assert set(runtimes) == set(CUDA_DTYPES)
    for entry in runtimes.values():
        assert entry["cascade_margin"] == 0.0 and entry["decision_flips"] == 0
        assert entry["mean_views"] == pytest.approx(float(decided.views.float().mean()))
        assert "against the CPU" in entry["margin_from"]
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(path.read_bytes())
    report = {"format": REPORT_FORMAT, "views": 8, "cascade": cascade_key(read_metadata(copy)), "chosen": "torch",
              "runtimes": {"torch-cuda-fp16": {"cascade_margin": 0.25}, "torch-cuda-bf16": {"cascade_margin": -1},
                           "torch-cuda-fp32": {}}}
    artefact_paths(copy)["report"].write_text(json.dumps(report))
    assert Predictor.measured_error_margin(copy, "torch-cuda-fp16") == 0.25
    assert Predictor.measured_error_margin(copy, "torch-cuda-bf16") == math.inf
    assert Predictor.measured_error_margin(copy, "torch-cuda-fp32") == math.inf
    never = predictor.cascade.widened(math.inf)
    assert never.decide_from_views(averaged_model[2])[1].tolist() == [8] * 12  # infinite error: all 8 views
