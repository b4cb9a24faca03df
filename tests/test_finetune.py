"""The CPU fine-tuning recipe (classifier.training.finetune), the validation report it stores with a model,
and the Predictor's use of it: test-time averaging over the 8 orientations and calibration.

ImageNet weights are not downloaded here: a cache of randomly initialised weights with the real
names stands in (the recipe only needs the names and shapes to be torchvision's)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from torchvision.models import vgg16

from classifier import ModelMetadata, Predictor, save_model_file
from classifier.presets import DIHEDRAL_VIEWS, dihedral
from classifier.training import metrics, validation
from classifier.training.builder import build_model
from classifier.training.data import load_samples, split_samples
from classifier.training.imagenet import CACHE_NAME
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = {f"features.{k}": v.contiguous() for k, v in vgg16(weights=None).features.state_dict().items()}
    save_file(state, str(folder / CACHE_NAME))
    return folder


def run(*args, weights_dir, timeout=600):
    env = {"PATH": "/usr/bin:/bin", "SKINWEB_WEIGHTS_DIR": str(weights_dir), "PYTHONHASHSEED": "random"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


FINETUNE = ("classifier.training.finetune", "--data", str(FIXTURES), "--image-size", "32", "--views", "2",
            "--batch-size", "4", "--val-fraction", "0.34", "--threads", "2", "--bootstrap", "50")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, weights_dir):
    out = tmp_path_factory.mktemp("finetune")
    r = run(*FINETUNE, "--out", str(out), "--epochs", "2", weights_dir=weights_dir)
    assert r.returncode == 0, r.stderr
    return out


def test_finetune_writes_a_model_with_its_validation_report(finetuned):
    meta = ModelMetadata.from_json(json.dumps(json.loads((finetuned / "model.json").read_text())))
    assert meta.arch == "vgg16" and meta.input_size == 32
    assert meta.tta in ("none", "dihedral8")
    assert set(meta.calibration) == {"method", "scale", "bias"}
    op = meta.operating_point
    assert op["band"][0] <= meta.threshold <= op["band"][1] and op["threshold"] == meta.threshold
    v = meta.metrics["validation"]
    assert v["sensitivity"] >= 0.9
    for key in ("per_source", "per_diagnosis", "headline", "melanoma_vs_nevus_sk", "dihedral_flip_rate",
                "single_view_flip_rate", "calibration"):
        assert key in v
    assert set(v["per_source"]) <= {"isic2017", "kaggle180"}
    assert {"ece_before", "ece_after", "ece_after_cross_fitted", "brier_before", "brier_after"} <= set(v["calibration"])
    assert v["headline"]["definition"].startswith("melanoma vs nevus")
    recipe = meta.training["recipe"]
    assert recipe["views"] == 2 and recipe["method"].startswith("frozen blocks 1-4")
    assert [json.loads(x)["epoch"] for x in (finetuned / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_finetune_keeps_the_imagenet_trunk_frozen(finetuned, weights_dir):
    from safetensors.torch import load_file

    from classifier.model import load_classifier

    model, _ = load_classifier(finetuned / "model.safetensors")
    trunk = load_file(str(weights_dir / CACHE_NAME))
    state = model.state_dict()
    # Stored in fp16: equal to the ImageNet weights at that precision; block 5 has moved.
    assert torch.equal(state["features.21.weight"], trunk["features.21.weight"].half().float())
    assert not torch.equal(state["features.28.weight"], trunk["features.28.weight"].half().float())


def test_finetune_resumes_without_recomputing_the_cache(finetuned, tmp_path, weights_dir):
    out = tmp_path / "resumed"
    shutil.copytree(finetuned, out)
    r = run(*FINETUNE, "--out", str(out), "--epochs", "3", "--resume", weights_dir=weights_dir)
    assert r.returncode == 0, r.stderr
    assert "resumed after epoch 2" in r.stderr
    assert ".npy:" not in r.stderr  # no cache progress lines: every view was already cached
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_tune_from_block_4_trains_blocks_4_and_5_and_refuses_a_cache_of_another_depth(finetuned, tmp_path,
                                                                                         weights_dir):
    out = tmp_path / "b4"
    r = run(*FINETUNE, "--out", str(out), "--epochs", "1", "--tune-from", "4", weights_dir=weights_dir)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["recipe"]["method"].startswith("frozen blocks 1-3 (cached), blocks 4-5")
    assert np.load(out / "cache" / "val-d0.npy", mmap_mode="r").shape[1:] == (256, 4, 4)  # block 3 of 32 px
    from safetensors.torch import load_file

    from classifier.model import load_classifier

    state = load_classifier(out / "model.safetensors")[0].state_dict()
    trunk = load_file(str(weights_dir / CACHE_NAME))
    assert torch.equal(state["features.14.weight"], trunk["features.14.weight"].half().float())  # block 3: frozen
    assert not torch.equal(state["features.17.weight"], trunk["features.17.weight"].half().float())  # block 4: trained
    # The block-5 run's cache is block-4 features: reusing its folder with --tune-from 4 is refused, not misread.
    mixed = tmp_path / "mixed"
    shutil.copytree(finetuned, mixed)
    r = run(*FINETUNE, "--out", str(mixed), "--epochs", "1", "--tune-from", "4", "--resume", weights_dir=weights_dir)
    assert r.returncode != 0 and "features of another shape" in r.stderr


def test_a_diagnosis_head_trained_jointly_ships_as_the_differential_and_stays_out_of_the_model_file(
        finetuned, tmp_path, weights_dir):
    from safetensors import safe_open

    from classifier import differential
    from classifier.reference import CLASSES

    out = tmp_path / "joint"
    shutil.copytree(finetuned / "cache", out / "cache")  # the same frozen features: only training runs
    r = run(*FINETUNE, "--out", str(out), "--epochs", "1", "--diagnosis-weight", "1", "--balance-collections",
            weights_dir=weights_dir)
    assert r.returncode == 0, r.stderr
    assert ".npy:" not in r.stderr
    meta = ModelMetadata.from_json((out / "model.json").read_text())
    assert meta.training["recipe"]["diagnosis_weight"] == 1 and meta.training["recipe"]["balance_collections"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any(k.startswith("diagnosis") for k in f.keys())  # a plain vgg16 model file
    head = differential.load(out / "model.safetensors", meta.version)
    assert head.meta["method"].startswith("trained jointly") and head.meta["n_train"] > 0
    assert head.weight.shape == (len(CLASSES), 512) and not head.mean.any() and (head.scale == 1).all()
    assert 0 <= head.meta["validation"]["balanced_accuracy"] <= 1 and set(head.meta["per_source"]) <= {
        "isic2017", "kaggle180"}
    # The head scores the worker's embedding: the pooled features the model file computes.
    from classifier.model import load_classifier
    from classifier.presets import ClassificationPresetEval
    from classifier.training.data import load_rgb

    model, _ = load_classifier(out / "model.safetensors")
    samples = load_samples(FIXTURES)
    x = torch.stack([ClassificationPresetEval(32)(torch.from_numpy(np.array(load_rgb(s.path))).permute(2, 0, 1))
                     for s in samples[:3]])
    with torch.inference_mode():
        _, pooled = model.eval().forward_with_features(x)
    probs = head.probabilities(pooled.numpy())
    assert probs.shape == (3, len(CLASSES)) and np.allclose(probs.sum(1), 1)
    from classifier.training import finetune

    bad = finetune.get_args_parser().parse_args([*FINETUNE[1:], "--out", str(tmp_path / "bad"), "--diagnosis-weight",
                                                 "-1"])
    with pytest.raises(SystemExit, match="--diagnosis-weight -1"):
        finetune.main(bad)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    # Its checkpoint holds the diagnosis head: resuming without the option is refused, not misread.
    r = run(*FINETUNE, "--out", str(out), "--epochs", "2", "--resume", "--balance-collections", weights_dir=weights_dir)
    assert r.returncode != 0 and "trained with --diagnosis-weight: resume with the same setting" in r.stderr


def test_collections_are_source_id_block_and_lesion_prefix_and_balancing_removes_their_label_share():
    from pathlib import Path

    from classifier.training.data import Sample, collection, collection_balance

    assert collection(Sample(Path("i/ISIC_0012653.jpg"), 1, "MSK4_0011169", source="isic2017")) == "isic2017/12k/MSK4"
    assert collection(Sample(Path("i/ISIC_0000004.jpg"), 1, "image:i/ISIC_0000004.jpg", source="isic2017")) == \
        "isic2017/0k/"
    assert collection(Sample(Path("i/x.png"), 0, "HAM_0001", source="ham224")) == "ham224/-/HAM"

    def make(block, pos, neg):
        return [Sample(Path(f"i/ISIC_{block:04d}{i:03d}.jpg"), y, f"image:{block}-{i}-{y}", source="s")
                for y, n in ((1, pos), (0, neg)) for i in range(n)]

    samples = make(1, 10, 10) + make(2, 2, 18) + make(3, 0, 20)  # melanoma share 50%, 10%, 0%; overall 20%
    w = np.array(collection_balance(samples, prior_images=0))
    y = np.array([s.label for s in samples])
    for block in (1, 2):
        m = np.array([collection(s) == f"s/{block}k/" for s in samples])
        assert (w[m] * y[m]).sum() / w[m].sum() == pytest.approx(0.2)  # every mixed block at the overall share
    assert w[-1] == pytest.approx(0.8)  # a block of nevi only is sampled less, not removed
    shrunk = np.array(collection_balance(samples, prior_images=20))
    assert (np.abs(shrunk - 1) <= np.abs(w - 1) + 1e-12).all()  # small blocks pulled toward weight 1


def test_the_cache_continues_after_a_kill_with_the_same_features(tmp_path, monkeypatch, weights_dir):
    from classifier.training import finetune

    monkeypatch.setattr(finetune, "CHUNK", 4)
    monkeypatch.setenv("SKINWEB_WEIGHTS_DIR", str(weights_dir))
    samples = load_samples(FIXTURES)
    trunk = finetune.Trunk(build_model("vgg16", pretrained="imagenet").features, 32).eval()
    view = finetune.TrainView(32, plain=False)

    def dies_at_six(img, i):
        if i == 6:
            raise KeyboardInterrupt
        return view(img, i % 8)

    with pytest.raises(KeyboardInterrupt):
        finetune.fill_cache(trunk, samples, tmp_path / "a.npy", dies_at_six)
    assert (tmp_path / "a.done").read_text() == "4"
    finetune.fill_cache(trunk, samples, tmp_path / "a.npy", lambda img, i: view(img, i % 8))
    (tmp_path / "fresh").mkdir()  # same name, same seeds: a run that was never killed
    finetune.fill_cache(trunk, samples, tmp_path / "fresh" / "a.npy", lambda img, i: view(img, i % 8))
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "fresh" / "a.npy"))


def test_evaluate_reports_sources_headline_flips_and_calibration(finetuned, weights_dir):
    r = run("classifier.training.evaluate", "--data", str(FIXTURES), "--model", str(finetuned / "model.safetensors"),
            "--split", "validation", "--bootstrap", "50", weights_dir=weights_dir)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    meta = json.loads((finetuned / "model.json").read_text())
    assert result["n"] == meta["training"]["validation"]["n"] and result["split"] == "validation"
    assert 0 <= result["dihedral_flip_rate"] <= 1
    assert {"per_source", "per_diagnosis", "headline", "calibration", "auc"} <= set(result)
    # The stored figures were computed on the same images through bf16 block-4 features; the worker's
    # fp32 path agrees with them closely.
    assert result["auc"] == pytest.approx(meta["metrics"]["validation"]["auc"], abs=0.1)


# Test-time averaging and calibration in the Predictor ------------------------------------------------

@pytest.fixture(scope="module")
def tta_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tta") / "tta.safetensors"
    torch.manual_seed(1)
    meta = ModelMetadata(version="tta-test", input_size=32, threshold=0.4, tta="dihedral8",
                         calibration={"method": "platt", "scale": 1.7, "bias": -0.3})
    save_model_file(path, build_model("vgg16"), meta)
    return path


def test_averaged_predictions_do_not_depend_on_orientation(tta_model):
    predictor = Predictor.from_file(tta_model, device="cpu", runtime="torch")
    images = [Image.open(s.path).convert("RGB") for s in load_samples(FIXTURES)[:4]]
    base = np.array(predictor.probabilities(images))
    for op in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.FLIP_LEFT_RIGHT,
               Image.Transpose.TRANSVERSE):
        np.testing.assert_allclose(predictor.probabilities([im.transpose(op) for im in images]), base, atol=1e-4)


def test_predictor_applies_averaging_then_calibration(tta_model):
    predictor = Predictor.from_file(tta_model, device="cpu", runtime="torch")
    batch = predictor.preprocess([s.path for s in load_samples(FIXTURES)[:3]])
    with torch.inference_mode():
        views = torch.stack([predictor.runner.model(dihedral(batch, k)) for k in range(DIHEDRAL_VIEWS)])
    expected = torch.sigmoid(1.7 * views.mean(0) - 0.3)
    np.testing.assert_allclose(predictor.run(batch), expected.numpy(), atol=1e-5)


# classifier.training.validation --------------------------------------------------------------------------------

def test_platt_fit_matches_unregularised_logistic_regression():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    z = 3 * y - 1.5 + rng.normal(0, 1.5, 400)
    fit = validation.fit_platt(z, y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(z.reshape(-1, 1), y)
    assert fit["scale"] == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert fit["bias"] == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-5)


def test_platt_fit_converges_on_the_large_logits_of_an_over_confident_network():
    # A network trained to a low training loss gives logits of +-10 and more; from (1, 0) a plain
    # Newton step overshoots and the iteration ran off to a scale of 1e10 (saturated probabilities,
    # threshold 0, AUC lost to ties). The fit must still be the logistic regression's.
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.26).astype(int)
    z = 8 * (rng.normal(0, 1, 1000) + 1.6 * y - 1.5) - 3
    fit = validation.fit_platt(z, y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(z.reshape(-1, 1), y)
    assert fit["scale"] == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert fit["bias"] == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-5)
    p = validation.apply_calibration(z, fit)
    assert metrics.roc_auc(y, p) == pytest.approx(metrics.roc_auc(y, z))


def test_calibration_error_and_brier_hand_computed():
    # Bins [0.1, 0.2) holds p = 0.1, 0.1 (observed 0.5) and [0.9, 1] holds p = 0.9, 0.9 (observed 1).
    y, p = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    assert validation.expected_calibration_error(y, p) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert validation.brier(y, p) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)


def test_composition_table_is_the_dihedral_group():
    table = validation.dihedral_composition()
    for row in list(table) + list(table.T):
        assert sorted(row) == list(range(8))  # a Latin square: every composition is another view
    x = torch.arange(12.0).view(3, 4)
    for g in range(8):
        for k in range(8):
            assert torch.equal(dihedral(dihedral(x, g), k), dihedral(x, table[g, k]))


def test_flip_rates_with_and_without_averaging():
    rng = np.random.default_rng(0)
    view_logits = rng.normal(0, 1, (500, 8))
    single = validation.decisions_per_orientation(view_logits, "none", {}, 0.5)
    assert validation.flip_rate(single) > 0.5  # independent noise per view: most images flip
    averaged = validation.decisions_per_orientation(view_logits, "dihedral8", {}, 0.5)
    assert validation.flip_rate(averaged) == 0.0
    assert validation.flip_rate([[True] * 8, [False] * 8, [True] * 7 + [False]]) == pytest.approx(1 / 3)


def test_choose_and_report_averages_when_single_views_flip():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    view_logits = (2 * y - 1)[:, None] + rng.normal(0, 1.2, (300, 8))
    samples = [type("S", (), {"source": "isic2017", "diagnosis": "melanoma" if t else "nevus", "group": str(i)})()
               for i, t in enumerate(y)]
    report = validation.choose_and_report(y, view_logits, samples, n_boot=50)
    v = report["validation"]
    assert report["tta"] == "dihedral8" and v["dihedral_flip_rate"] == 0.0 and v["single_view_flip_rate"] > 0.02
    assert v["sensitivity"] >= 0.9 and v["headline"]["n"] == 300
    assert v["calibration"]["ece_after"] <= v["calibration"]["ece_before"] + 1e-9


def test_split_keeps_train_only_sources_in_training():
    samples = load_samples(FIXTURES)
    train, val = split_samples(samples, 0.34, 0, train_only_sources=("kaggle180",))
    assert {s.source for s in val} == {"isic2017"}
    assert sum(s.source == "kaggle180" for s in train) == 6
