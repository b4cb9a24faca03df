"""Fast CPU artefacts (ONNX fp32, int8) and their accuracy guard; batching in the worker's function."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from classifier import Predictor
from classifier.artefacts import artefact_paths, read_report
from classifier.predictor import threshold_logit
from classifier.presets import dihedral
from classifier.runtime import CUDA_DTYPES, FastPathError, OnnxRunner, Recheck
from classifier.training import fastpath
from classifier.training.data import load_samples, split_samples
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_file):
    """A copy of the test model with its artefacts built from the fixture images (once per module)."""
    path = tmp_path_factory.mktemp("fast") / "m.safetensors"
    shutil.copyfile(model_file, path)
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    report = fastpath.build_artefacts(path, inputs, batch_size=4, int8="always")
    return path, report, inputs


def test_agreement_counts_flips_and_auc_change_by_hand():
    ref = np.array([0.1, 0.4, 0.6, 0.9])
    got = np.array([0.1, 0.55, 0.45, 0.9])  # two decisions flip at 0.5; the ranking of classes is kept
    labels = np.array([0, 0, 1, 1])
    a = fastpath.agreement(ref, got, labels, 0.5)
    assert a["decision_flips"] == 2 and a["decision_flip_rate"] == 0.5
    assert a["max_probability_difference"] == pytest.approx(0.15)
    assert a["auc_fp32"] == 1.0 and a["auc"] == 0.75 and a["auc_delta"] == pytest.approx(-0.25)
    assert a["passed"] is False
    same = fastpath.agreement(ref, ref + 1e-4, labels, 0.5)
    assert same["decision_flips"] == 0 and same["passed"] is True


def test_a_small_calibration_set_is_shown_in_more_orientations_where_the_model_averages_them():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert fastpath.calibration_inputs(images, views=1) is images  # a model that only ever sees it upright
    many = fastpath.calibration_inputs(images, views=8)
    assert many.shape == (16, 3, 4, 4) and torch.equal(many[:2], images)
    assert all(torch.equal(many[2 * k:2 * k + 2], dihedral(images, k)) for k in range(8))
    big = torch.zeros(fastpath.MIN_CALIBRATION_INPUTS, 3, 4, 4)
    assert fastpath.calibration_inputs(big, views=8) is big  # enough already: upright only


def test_the_guard_compares_the_decisions_the_worker_makes(tmp_path, model_file):
    """A model that averages the 8 orientations is judged on the averaged probability the worker
    computes, not on the upright view's (which a quantised copy can flip where the average does not)."""
    from classifier.model import load_classifier
    from classifier.modelfile import save_model_file

    model, meta = load_classifier(model_file)
    path = tmp_path / "d8.safetensors"
    save_model_file(path, model, dataclasses.replace(meta, tta="dihedral8", calibration={"scale": 2.0, "bias": -0.5}))
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    assert predictor.metadata.views == 8
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    images = inputs.validation
    guard = fastpath.run_batched(predictor.runner, images, 4, predictor.calibrate, predictor.metadata.views)
    worker = np.array(predictor.run(images))
    upright = fastpath.run_batched(predictor.runner, images, 4, predictor.calibrate)
    assert np.allclose(guard, worker, atol=1e-6)
    assert not np.allclose(upright, worker, atol=1e-4)  # the views differ: a single one is another figure
    report = fastpath.build_artefacts(path, inputs, batch_size=4, onnx=False)
    assert report["views"] == 8 and report["runtimes"]["torch-fp32"]["n"] == len(inputs.validation)


def test_guard_bounds_are_the_issue_s():
    ref = np.linspace(0, 1, 1000)
    labels = (ref > 0.5).astype(int)
    one_in_200 = ref.copy()
    one_in_200[[100, 700, 800, 900, 950]] = 1 - one_in_200[[100, 700, 800, 900, 950]]
    assert fastpath.agreement(ref, one_in_200, labels, 0.5)["decision_flip_rate"] == 0.005


def test_build_writes_the_artefacts_and_a_report(built):
    path, report, inputs = built
    paths = artefact_paths(path)
    assert paths["onnx-fp32"].is_file() and paths["onnx-int8"].is_file()
    assert read_report(path) == report
    assert {"torch-fp32", "onnx-fp32", "onnx-int8"} <= set(report["runtimes"])
    assert report["validation_images"] == len(inputs.validation) > 0
    train, _ = split_samples(load_samples(FIXTURES), 0.2, 0)
    assert report["calibration_images"] == len(inputs.calibration) == len(train) == 8  # the fixtures' training split
    for r in report["runtimes"].values():
        assert r["img_s"] > 0 and r["n"] == len(inputs.validation)
    # The fp32 export computes what PyTorch computes.
    assert report["runtimes"]["onnx-fp32"]["max_probability_difference"] < 1e-4
    assert report["runtimes"][report["chosen"]]["passed"]
    # The int8 graph really is quantised: its file holds int8 weights, a quarter of the size.
    assert paths["onnx-int8"].stat().st_size < 0.35 * paths["onnx-fp32"].stat().st_size
    # The recheck can only undo int8's flips (an image it flips lies outside the band, where the int8
    # decision is kept), and it costs at least int8's time.
    int8, recheck = report["runtimes"]["onnx-int8"], report["runtimes"]["onnx-int8-recheck"]
    assert recheck["decision_flips"] <= int8["decision_flips"] and recheck["img_s"] <= int8["img_s"]
    assert recheck["recheck_margin"] > 0 and 0 <= recheck["rechecked"] <= recheck["n"]
    assert recheck["rechecked_share"] == recheck["rechecked"] / recheck["n"]
    assert "8 calibration images" in recheck["margin_from"]


def test_the_recheck_s_guard_figures_are_what_the_worker_s_runtime_decides(tmp_path, model_file, monkeypatch):
    """The build takes each rerun image's fp32 result from its own fp32 check rather than computing it
    again: the worker, running int8 with the recheck for real, reruns the same images and decides as
    the report says. (A recheck band wide enough to rerun every check image, so that every figure
    comes from a rerun.)"""
    path = tmp_path / "m.safetensors"
    shutil.copyfile(model_file, path)
    monkeypatch.setattr(fastpath, "RECHECK_SAFETY", 1e6)
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    report = fastpath.build_artefacts(path, inputs, batch_size=4, int8="always")
    recorded = report["runtimes"]["onnx-int8-recheck"]
    assert recorded["rechecked"] == len(inputs.validation) > 0
    reference = np.array(Predictor.from_file(path, device="cpu", runtime="torch").run(inputs.validation))
    worker = Predictor.from_file(path, device="cpu", runtime="onnx-int8-recheck")
    got = fastpath.agreement(reference, np.array(worker.run(inputs.validation)), inputs.validation_labels,
                             worker.threshold)
    assert worker.recheck.rechecked == recorded["rechecked"]
    assert got["decision_flips"] == recorded["decision_flips"] == 0
    assert got["max_probability_difference"] == pytest.approx(recorded["max_probability_difference"], abs=1e-5)
    assert set(report["seconds_by_step"]) >= {"torch-fp32 reference", "onnx-fp32 export and check",
                                              "int8 quantisation", "int8 margin and check"}


def test_the_recheck_reruns_exactly_the_borderline_images_in_every_view():
    batch = torch.rand(5, 3, 4, 4)
    calls = []

    def exact(b):  # the same logit in every orientation: the mean of the pixels
        calls.append(len(b))
        return b.mean((1, 2, 3))

    recheck = Recheck(exact, threshold_logit=1.0, margin=0.1, views=8)
    fast = torch.tensor([-3.0, 0.9375, 1.0625, 1.25, 5.0])
    out = recheck(batch, fast)
    assert calls == [2] * 8  # the two images within 0.1 of the threshold's logit, in all 8 orientations
    assert torch.allclose(out[1:3], batch[1:3].mean((1, 2, 3)))
    assert out[[0, 3, 4]].tolist() == [-3.0, 1.25, 5.0] and fast[1] == 0.9375  # the input is left as it was
    assert (recheck.images, recheck.rechecked) == (5, 2)
    assert recheck(batch[:1], fast[:1]).tolist() == [-3.0] and calls == [2] * 8  # nothing near: no exact pass


def test_the_threshold_s_logit_maps_back_to_the_threshold_through_the_calibration(model_file):
    from classifier.modelfile import read_metadata

    meta = dataclasses.replace(read_metadata(model_file), threshold=0.3, calibration={"scale": 2.0, "bias": -0.5})
    predictor = Predictor(None, meta, torch.device("cpu"), runner=lambda b: b)
    assert float(predictor.calibrate(torch.tensor([threshold_logit(meta)]))) == pytest.approx(0.3)


def test_the_recheck_runtime_gives_fp32_decisions_inside_its_band_and_int8_s_outside(built, tmp_path):
    path, report, inputs = built
    copy = tmp_path / "m.safetensors"
    for src, dest in zip(artefact_paths(path).values(), artefact_paths(copy).values(), strict=True):
        shutil.copyfile(src, dest)
    shutil.copyfile(path, copy)
    images = inputs.validation
    probs = {r: np.array(Predictor.from_file(copy, device="cpu", runtime=r).run(images))
             for r in ("onnx-fp32", "onnx-int8")}

    def with_margin(margin):
        entry = {**report["runtimes"]["onnx-int8-recheck"], "recheck_margin": margin}
        artefact_paths(copy)["report"].write_text(json.dumps(
            {**report, "chosen": "onnx-int8-recheck", "runtimes": {**report["runtimes"], "onnx-int8-recheck": entry}}))
        return Predictor.from_file(copy, device="cpu", runtime="onnx-int8-recheck")

    everything = with_margin(1e6)
    assert everything.runtime == "onnx-int8-recheck"
    np.testing.assert_allclose(everything.run(images), probs["onnx-fp32"], atol=1e-6)
    assert everything.recheck.rechecked == len(images)
    from classifier.training.evaluate import (
        predict_all,  # classifier.training.evaluate's probabilities are the worker's too
    )

    samples = load_samples(FIXTURES)[:6]
    evaluated, per_view, _ = predict_all(everything, samples, 4)
    batch = everything.preprocess([s.path for s in samples])
    np.testing.assert_allclose(evaluated, everything.run(batch), atol=1e-6)
    # Without test-time averaging each orientation is decided alone: its logit is rechecked as an upload
    # of it would be, so the flip rate counts the worker's decisions (here all fp32's).
    assert everything.metadata.views == 1
    exact = Predictor.from_file(copy, device="cpu", runtime="onnx-fp32")
    np.testing.assert_allclose(per_view, exact.view_logits(batch).numpy(), atol=1e-5)
    assert not np.allclose(per_view, Predictor.from_file(copy, device="cpu", runtime="onnx-int8").view_logits(
        batch).numpy(), atol=1e-5)  # int8's own differ: the check above can fail
    nothing = with_margin(0.0)
    np.testing.assert_allclose(nothing.run(images), probs["onnx-int8"], atol=1e-6)
    assert nothing.recheck.rechecked == 0
    # A report without the margin, or without the fp32 graph to rerun on: never int8 unchecked (another accepted
    # runtime, or PyTorch fp32).
    with_margin(None)
    assert not Predictor.from_file(copy, device="cpu").runtime.startswith("onnx-int8")
    with_margin(0.5)
    artefact_paths(copy)["onnx-fp32"].unlink()
    assert Predictor.from_file(copy, device="cpu").runtime == "torch"


def test_report_has_no_cuda_choice_without_a_gpu(built):
    _, report, _ = built
    if torch.cuda.is_available():
        assert report["chosen_cuda"] in CUDA_DTYPES
    else:
        assert report["chosen_cuda"] is None and not any(n.startswith("torch-cuda") for n in report["runtimes"])


def test_cuda_guard_checks_each_precision_against_fp32(built):
    """The GPU guard's bookkeeping, run on the CPU (where autocast is off, so every precision agrees
    with fp32; on a GPU the same code measured fp16 at 0/679 flips, bf16 at 5/679 and rejected)."""
    path, _, inputs = built
    predictor = Predictor.from_file(path, device="cpu", runtime="torch")
    reference = fastpath.run_batched(predictor.runner, inputs.validation, 4)
    runtimes = {}
    chosen = fastpath.check_cuda(predictor.runner.model, inputs, reference, inputs.validation_labels,
                                 predictor.threshold, runtimes, batch_size=4, device=torch.device("cpu"))
    assert set(runtimes) == set(CUDA_DTYPES) and chosen in CUDA_DTYPES
    for r in runtimes.values():
        assert r["passed"] and r["n"] == len(inputs.validation) and r["img_s"] > 0


def test_cuda_runtime_is_refused_clearly_without_a_gpu(built):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Predictor.from_file(built[0], runtime="torch-cuda-fp16")


def test_predictor_uses_the_chosen_runtime_and_agrees_with_pytorch(built):
    path, report, _ = built
    images = sorted((FIXTURES / "images").iterdir())[:6]
    fast = Predictor.from_file(path, device="cpu")
    reference = Predictor.from_file(path, device="cpu", runtime="torch")
    # The fastest accepted runtime on this CPU (test_a_worker_times_the_accepted_runtimes_on_its_own_cpu_once).
    chosen = "torch-fp32" if fast.runtime == "torch" else fast.runtime
    assert report["runtimes"][chosen]["passed"]
    a = np.array(fast.probabilities(images))
    b = np.array(reference.probabilities(images))
    assert np.abs(a - b).max() <= max(0.05, report["runtimes"][chosen]["max_probability_difference"] * 2)
    for runtime in ("onnx-fp32", "onnx-int8"):
        p = Predictor.from_file(path, device="cpu", runtime=runtime)
        assert p.runtime == runtime and len(p.probabilities(images)) == 6


def test_a_missing_artefact_falls_back_to_pytorch(built, tmp_path):
    path, report, _ = built
    copy = tmp_path / "m.safetensors"
    shutil.copyfile(path, copy)
    paths = artefact_paths(copy)
    paths["report"].write_text(json.dumps({**report, "chosen": "onnx-int8"}))
    # The report names an int8 file that is not there.
    assert Predictor.from_file(copy, device="cpu").runtime == "torch"
    paths["report"].write_text("{not json")
    assert Predictor.from_file(copy, device="cpu").runtime == "torch"


def test_unknown_runtime_is_refused(built):
    with pytest.raises(ValueError, match="unknown runtime"):
        Predictor.from_file(built[0], runtime="tensorrt")


def test_bench_prints_one_json_object(built):
    path = built[0]
    result = subprocess.run(
        [sys.executable, "-m", "classifier.training.bench", "--model", str(path), "--images", "8", "--batch-size", "4",
         "--data", str(FIXTURES), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("baseline_img_s", "product_img_s", "speedup", "decision_flip_rate", "rss_mb", "runtime",
                "rechecked_share"):
        assert key in out
    assert out["images"] == 8 and out["rss_mb"] > 0 and 0 <= out["decision_flip_rate"] <= 1
    # The runtime a worker here runs: the fastest accepted one on this CPU (Predictor.fastest_here).
    assert built[1]["runtimes"][out["runtime"].replace("torch-cpu", "torch-fp32")]["passed"]
    # Decoding alone, on one thread and on one per core; a CPU worker decodes on one (its cores run the model).
    assert out["worker_decoders"] == 1 and out["decode_img_s_by_threads"]["1"] > 0
    assert set(out["decode_img_s_by_threads"]) == {"1", str(os.cpu_count())}


def test_onnx_runner_reports_a_corrupt_file(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(FastPathError, match="cannot load x.onnx"):
        OnnxRunner(bad)
    assert torch.zeros(1).numel() == 1


def test_a_report_guarded_on_other_orientations_than_the_model_decides_on_is_not_used(built, tmp_path):
    """A rehearsal's report (fewer views than the model averages) never picks a worker's runtime."""
    path, report, _ = built
    copy = tmp_path / "m.safetensors"
    shutil.copyfile(path, copy)
    shutil.copyfile(artefact_paths(path)["onnx-fp32"], artefact_paths(copy)["onnx-fp32"])
    # Only onnx-fp32 accepted: no timing on this CPU decides between runtimes (test_a_worker_times_... does).
    accepted = {k: {**v, "passed": k == "onnx-fp32"} for k, v in report["runtimes"].items()}
    for views, runtime in ((report["views"], "onnx-fp32"), (report["views"] + 1, "torch")):
        artefact_paths(copy)["report"].write_text(json.dumps({**report, "chosen": "onnx-fp32", "views": views,
                                                              "runtimes": accepted}))
        assert Predictor.from_file(copy, device="cpu").runtime == runtime


def test_a_report_that_chose_pytorch_loads_pytorch(built, tmp_path):
    path, report, _ = built
    copy = tmp_path / "m.safetensors"
    shutil.copyfile(path, copy)
    artefact_paths(copy)["report"].write_text(json.dumps({**report, "chosen": "torch-fp32"}))
    assert Predictor.from_file(copy, device="cpu").runtime == "torch"


def test_a_fresh_clone_builds_and_guards_the_int8_path_of_the_shipped_model_from_the_shipped_images(tmp_path):
    """No ../shared: the check set shipped in classifier/checkset (CC-0 ISIC 2017 images) calibrates the
    starter's int8 copy and guards it (make run on a fresh clone, through the registry). Here a rehearsal
    of that build on the shipped model: 16 calibration and 32 check images, decided upright only. The
    whole build (128 + 256 images in the model's 8 orientations, about 35 minutes on two cores) is what a
    published version gets and a benchmark prints: ``python -m classifier.training.fastpath --model
    classifier/models/starter.safetensors --data classifier/checkset`` (docs/benchmarks.md)."""
    from classifier.artefacts import read_report
    from classifier.modelfile import DEFAULT_MODEL_PATH, read_metadata

    path = tmp_path / "starter.safetensors"
    shutil.copyfile(DEFAULT_MODEL_PATH, path)
    checkset = ROOT / "classifier" / "checkset"
    shipped = fastpath.inputs_from_dataset(path, checkset, n_calibration=1024)
    assert (len(shipped.calibration), len(shipped.validation)) == (128, 256)
    assert "the split its labels.csv fixes: 128 calibration, 256 check images" in shipped.description
    inputs = dataclasses.replace(shipped, calibration=shipped.calibration[:16], validation=shipped.validation[:32],
                                 validation_labels=shipped.validation_labels[:32])
    report = fastpath.build_artefacts(path, inputs, views=1, int8="always")
    runtimes = report["runtimes"]
    int8 = runtimes["onnx-int8"]
    # int8 tried with the first convolution in fp32, then (if that missed) the first two; the verdict
    # follows the guard's limits.
    assert [a["fp32_convolutions"] for a in int8["earlier_attempts"]] + [int8["fp32_convolutions"]] in ([1], [1, 2])
    assert int8["n"] == 32 and int8["passed"] == (int8["decision_flip_rate"] <= fastpath.MAX_FLIP_RATE
                                                   and abs(int8["auc_delta"]) <= fastpath.MAX_AUC_DELTA)
    assert runtimes["onnx-fp32"]["passed"] and runtimes["onnx-fp32"]["decision_flips"] == 0
    assert runtimes["onnx-fp32"]["max_probability_difference"] < 1e-4
    chosen = report["chosen"]
    assert runtimes[chosen]["passed"]
    assert chosen == max((n for n, r in runtimes.items() if r["passed"]), key=lambda n: runtimes[n]["img_s"])
    recheck = runtimes["onnx-int8-recheck"]
    assert recheck["decision_flips"] <= int8["decision_flips"] and "16 calibration images" in recheck["margin_from"]
    # A rehearsal's guard is not the worker's (the starter decides on 8 orientations): never run.
    assert read_metadata(path).views == 8 and report["views"] == 1
    assert read_report(path) is None and Predictor.from_file(path, device="cpu").runtime == "torch"


def test_colour_constancy_is_in_the_onnx_graphs_and_stays_fp32_in_int8(tmp_path, model_file):
    """A model with colour constancy carries it inside its exported graphs (the worker's ONNX
    runtimes compute what PyTorch computes), and int8 quantises none of it."""
    import onnx

    from classifier.model import load_classifier
    from classifier.modelfile import save_model_file

    model, meta = load_classifier(model_file)
    path = tmp_path / "sog.safetensors"
    save_model_file(path, model, dataclasses.replace(meta, version="sog", colour_constancy=6))
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    report = fastpath.build_artefacts(path, inputs, batch_size=4, int8="always")
    assert report["runtimes"]["onnx-fp32"]["max_probability_difference"] < 1e-4
    nodes = onnx.load(str(artefact_paths(path)["onnx-int8"])).graph.node
    producer = {out: n for n in nodes for out in n.output}
    # Everything the first convolution's input is computed from: the shades-of-grey estimate, in fp32.
    ahead, todo = [], [next(n for n in nodes if n.op_type == "Conv").input[0]]
    while todo:
        n = producer.get(todo.pop())
        if n is not None and n not in ahead:
            ahead.append(n)
            todo += list(n.input)
    kinds = {n.op_type for n in ahead}
    assert {"Pow", "ReduceMean"} <= kinds and not {"QuantizeLinear", "DequantizeLinear"} & kinds
    torch_p = Predictor.from_file(path, device="cpu", runtime="torch").run(inputs.validation)
    onnx_p = Predictor.from_file(path, device="cpu", runtime="onnx-fp32").run(inputs.validation)
    plain = Predictor.from_file(model_file, device="cpu", runtime="torch").run(inputs.validation)
    assert np.allclose(torch_p, onnx_p, atol=1e-4) and not np.allclose(torch_p, plain, atol=1e-4)


@pytest.mark.parametrize("min_gain, built_int8", [(1e6, False), (0.0, True)])
def test_int8_is_built_only_where_a_probe_finds_it_faster_on_this_cpu(tmp_path, model_file, monkeypatch, min_gain,
                                                                       built_int8):
    """issue 43: on an AVX2-only CPU static int8 ran VGG16 slower than ONNX fp32; the build times a throwaway
    int8 graph against fp32 first and skips int8's calibration and guard where it would not win."""
    path = tmp_path / "m.safetensors"
    shutil.copyfile(model_file, path)
    monkeypatch.setattr(fastpath, "INT8_MIN_GAIN", min_gain)
    inputs = fastpath.inputs_from_dataset(path, FIXTURES, n_calibration=8)
    report = fastpath.build_artefacts(path, inputs, batch_size=4)
    probe = report["int8_probe"]
    assert probe["worth_it"] is built_int8 and probe["int8_passes_per_s"] > 0 and probe["onnx_fp32_passes_per_s"] > 0
    assert probe["gain"] == pytest.approx(probe["int8_passes_per_s"] / probe["onnx_fp32_passes_per_s"], rel=0.01)
    assert ("onnx-int8" in report["runtimes"]) is built_int8
    assert artefact_paths(path)["onnx-int8"].is_file() is built_int8
    assert not list(tmp_path.glob("*.probe.onnx"))
    assert report["runtimes"][report["chosen"]]["passed"]


def test_a_worker_times_the_accepted_runtimes_on_its_own_cpu_once(built, tmp_path, monkeypatch):
    """The build's choice was made on the building CPU; a worker measures the accepted graphs on its own,
    uses the fastest there and keeps the measurement beside the model for its next start."""
    from classifier import artefacts

    path, report, _ = built
    copy = tmp_path / "m.safetensors"
    for kind, src in artefact_paths(path).items():
        shutil.copyfile(src, artefact_paths(copy)[kind])
    shutil.copyfile(path, copy)
    passed = {n: r for n, r in report["runtimes"].items() if r["passed"]}
    first = Predictor.from_file(copy, device="cpu")
    entry = artefacts.read_speeds(copy)[artefacts.cpu_signature()["key"]]
    assert entry["report"] == report["created"] and entry["build_chose"] == report["chosen"]
    timed = entry["passes_per_s"]
    assert set(timed) >= {"onnx-int8" if n == "onnx-int8-recheck" else n for n in passed} - {"torch-cuda-fp32"}
    best = max((n for n in timed if n in passed), key=timed.get)
    assert first.runtime == entry["chosen"] == ("torch" if best == "torch-fp32" else best)
    # The next start reads the measurement instead of timing again.
    monkeypatch.setattr(artefacts, "record_speed", lambda *a, **k: pytest.fail("timed again"))
    assert Predictor.from_file(copy, device="cpu").runtime == first.runtime
    # Another CPU (another signature) measures for itself.
    monkeypatch.setattr(artefacts, "cpu_signature", lambda: {"name": "other", "threads": "2", "versions": [],
                                                             "key": "other"})
    with pytest.raises(pytest.fail.Exception, match="timed again"):
        Predictor.from_file(copy, device="cpu")


def test_workers_of_one_kind_of_cpu_keep_the_first_choice_for_a_report(tmp_path):
    """Two workers (or a worker and the builder) timing at once, each under the other's load, may rank the
    runtimes differently; the first choice recorded for a fast-path report is the one every later process of
    that CPU kind uses, so that they all run the same runtime. A new report is timed anew."""
    from classifier import artefacts

    model = tmp_path / "m.safetensors"
    signature = {"name": "cpu", "threads": "2", "versions": [], "key": "cpu-2"}
    first = artefacts.record_speed(model, signature, {"report": "r1", "chosen": "onnx-fp32"})
    second = artefacts.record_speed(model, signature, {"report": "r1", "chosen": "torch"})
    assert first["chosen"] == second["chosen"] == "onnx-fp32"
    assert artefacts.read_speeds(model)["cpu-2"]["chosen"] == "onnx-fp32"
    rebuilt = artefacts.record_speed(model, signature, {"report": "r2", "chosen": "torch"})
    assert rebuilt["chosen"] == "torch" and artefacts.read_speeds(model)["cpu-2"]["report"] == "r2"
