"""The locked test split (issue 30): drawn once by lesion, left out of every choice, scored once per
model file into a ledger; an operating point whose stated sensitivity is a lower confidence bound."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from classifier.artefacts import read_ledger
from classifier.modelfile import file_sha256, replace_metadata
from classifier.training import evaluate, metrics, validation
from classifier.training.data import LOCKED_FROM, Sample, load_samples, locked_test_split, split_as_recorded


def make_dataset(root, n_lesions=60, seed=0):
    """labels.csv with two sources, lesion ids (some lesions imaged twice) and small real JPEGs."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows, lesions = [], []
    for i in range(n_lesions):
        source = "isic2017" if i % 3 else "ham224"
        malignant = i % 4 == 0
        diagnosis = "melanoma" if malignant else ("nevus" if i % 5 else "seborrheic_keratosis")
        for j in range(1 + (i % 7 == 0)):
            name = f"ISIC_{i:04d}{j}"
            colour = (200, 120, 90) if malignant else (170, 140, 120)
            pixels = np.clip(rng.normal(colour, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", quality=90)
            rows.append([f"images/{name}.jpg", "malignant" if malignant else "benign", diagnosis, source, name])
            lesions.append([name, f"L{i:04d}"])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "label", "diagnosis", "source", "isic_id"], *rows])
    with open(root / "lesion_ids.csv", "w", newline="") as f:
        csv.writer(f).writerows([["isic_id", "lesion_id"], *lesions])
    return root


# Interval and bounds ------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (5, 20), (263, 292), (139, 146), (1, 1)])
def test_the_binomial_interval_is_clopper_pearson(k, n):
    from scipy.stats import beta

    lo, hi = metrics.binomial_interval(k, n, 0.95)
    assert lo == pytest.approx(beta.ppf(0.025, k, n - k + 1) if k else 0.0, abs=1e-9)
    assert hi == pytest.approx(beta.ppf(0.975, k + 1, n - k) if k < n else 1.0, abs=1e-9)


def test_the_threshold_s_sensitivity_has_its_lower_bound_at_the_target():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(150), np.zeros(450)].astype(bool)
    p = np.r_[rng.beta(5, 2, 150), rng.beta(2, 5, 450)]
    t = metrics.threshold_for_sensitivity_bound(y, p, 0.90)
    tp = int((p[y] >= t).sum())
    assert metrics.binomial_interval(tp, 150)[0] >= 0.90 > metrics.binomial_interval(tp - 1, 150)[0]
    assert tp == metrics.positives_for_lower_bound(150, 0.90) == 143
    # Stricter than the point estimate's threshold, which finds exactly ceil(0.9 n) of them.
    assert t < metrics.threshold_for_sensitivity(y, p, 0.90)
    assert int((p[y] >= metrics.threshold_for_sensitivity(y, p, 0.90)).sum()) == 135
    # Too few positives for the bound: the threshold finds all of them.
    few = np.array([1, 1, 0, 0, 0], bool), np.array([0.9, 0.4, 0.5, 0.2, 0.1])
    assert metrics.positives_for_lower_bound(2, 0.90) == 3
    assert metrics.confusion(*few, metrics.threshold_for_sensitivity_bound(*few, 0.90))["fn"] == 0


def test_the_band_floor_leaves_at_most_the_conformal_share_of_melanomas_below_it():
    samples = [Sample(None, 1, str(i), diagnosis="melanoma") for i in range(99)] + \
              [Sample(None, 0, f"b{i}", diagnosis="nevus") for i in range(100)]
    y = np.array([s.label for s in samples])
    p = np.r_[np.linspace(0.3, 0.99, 99), np.linspace(0.0, 0.5, 100)]
    floor = validation.band_floor(p, samples, y, share=0.02)
    # floor(0.02 * 100) = 2: the second lowest melanoma stays at or above it, the lowest falls below.
    assert int((p[:99] < floor).sum()) == 1 and floor < p[1]
    op = validation.operating_point(y, p, 0.6, samples=samples, target_sensitivity=0.9)
    assert op["band"][0] == pytest.approx(min(floor, metrics.threshold_for_sensitivity(y, p, 0.97)))
    assert op["sensitivity_ci"][0] <= op["sensitivity"] <= op["sensitivity_ci"][1]
    assert "2% of melanomas" in op["band_definition"] and "lower end" in op["threshold_definition"]
    statement = validation.held_out_statement(y, p, samples, op)
    assert statement["melanomas"] == 99 and statement["melanomas_below_band"] == int((p[:99] < op["band"][0]).sum())
    assert statement["sensitivity"] == op["sensitivity"] and statement["n_benign"] == 100


# The split ----------------------------------------------------------------------------------------

def test_the_locked_split_is_half_the_default_validation_side_by_lesion_in_every_stratum(tmp_path):
    samples = load_samples(make_dataset(tmp_path / "d", n_lesions=240))
    locked = locked_test_split(samples)
    assert locked == locked_test_split(list(reversed(samples)))  # no seed, no order: the same split
    train, val = split_as_recorded(samples, {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in LOCKED_FROM.items()})
    assert {s.path for s in locked} < {s.path for s in val}
    assert 0.4 * len(val) <= len(locked) <= 0.6 * len(val)
    by_group = {}
    for s in samples:
        by_group.setdefault(s.group, set()).add(s.path in {x.path for x in locked})
    assert all(len(sides) == 1 for sides in by_group.values())  # a lesion's images stay together
    strata = {(s.source, s.label) for s in val}
    assert {(s.source, s.label) for s in locked} == strata
    # Training with --locked-test: out of both sides, the rest of the split as before.
    train2, val2 = split_as_recorded(samples, {**LOCKED_FROM, "locked_test": True})
    ids = {s.path for s in locked}
    assert not ids & {s.path for s in train2 + val2}
    assert {s.path for s in train2} == {s.path for s in train} and {s.path for s in val2} == {s.path for s in val} - ids
    # A labels.csv with a fixed split (the check set, in-app retraining) has no locked split.
    assert locked_test_split([dataclasses.replace(s, split="train") for s in samples]) == []


# Scored once, into the ledger ----------------------------------------------------------------------

def run_evaluate(capsys, *args):
    code = evaluate.main(evaluate.get_args_parser().parse_args(list(args)))
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else None)


def test_a_model_file_is_scored_once_on_the_locked_split(tmp_path, model_file, capsys):
    data = make_dataset(tmp_path / "d")
    ledger = tmp_path / "ledger.jsonl"
    common = ["--data", str(data), "--split", "locked-test", "--ledger", str(ledger), "--bootstrap", "20",
              "--model", str(model_file)]
    code, first = run_evaluate(capsys, *common)
    assert code == 0 and first["n"] == len(locked_test_split(load_samples(data)))
    assert first["sha256"] == file_sha256(model_file) and first["clean"] is False  # its recipe predates it
    held = first["operating_point"]
    assert held["n_malignant"] == first["n_malignant"] and held["sensitivity_ci"][0] <= held["sensitivity"]
    code, again = run_evaluate(capsys, *common)
    assert code == 0 and again["already_scored"] and again["scored"] == first["scored"]
    assert len(ledger.read_text().splitlines()) == 1 and read_ledger(ledger)[first["sha256"]]["auc"] == first["auc"]
    code, _ = run_evaluate(capsys, *common, "--threshold", "0.3")
    assert code == 2


def test_a_model_that_trained_on_locked_images_is_refused(tmp_path, model_file, capsys):
    data = make_dataset(tmp_path / "d")
    other = tmp_path / "other.safetensors"
    other.write_bytes(model_file.read_bytes())
    replace_metadata(other, version="trained-on-another-split",
                     training={"recipe": {"val_fraction": 0.2, "seed": 7, "train_only_sources": []}})
    ledger = tmp_path / "ledger.jsonl"
    code, out = run_evaluate(capsys, "--data", str(data), "--split", "locked-test", "--ledger", str(ledger),
                             "--model", str(other))
    assert code == 2 and out is None and not ledger.exists()


# On the model page ----------------------------------------------------------------------------------

def test_the_model_page_shows_the_locked_figures_and_the_threshold_s_lower_bound(client, root, settings, tmp_path,
                                                                                 published_model):
    client.force_login(root)
    version = published_model
    assert version.sha256 == file_sha256(version.path)
    page = client.get(reverse("manage:model_detail", args=[version.pk])).content.decode()
    assert "Not scored on the locked test split" in page and version.sha256 in page
    entry = {"sha256": version.sha256, "version": version.version, "scored": "2026-12-04T21:00:00Z", "clean": False,
             "n": 578, "n_malignant": 180, "auc": 0.88, "auc_ci95": [0.85, 0.91],
             "headline": {"definition": "melanoma vs nevus + seborrheic keratosis, ISIC 2017 part", "auc": 0.84,
                          "auc_ci95": [0.77, 0.9], "n": 203, "n_melanoma": 39},
             "operating_point": {"threshold": version.threshold, "level": 0.95, "sensitivity": 0.9,
                                 "sensitivity_ci": [0.846, 0.94], "specificity": 0.66,
                                 "specificity_ci": [0.61, 0.7], "n_malignant": 180, "n_benign": 398,
                                 "melanomas": 93, "melanomas_below_band": 2, "band_share": 0.35}}
    settings.LOCKED_TEST_LEDGER = tmp_path / "ledger.jsonl"
    settings.LOCKED_TEST_LEDGER.write_text("not json\n" + json.dumps(entry) + "\n")
    page = client.get(reverse("manage:model_detail", args=[version.pk])).content.decode()
    assert "Not a clean estimate" in page and "2 of 93" in page and "AUC 0.840" in page
    words = type(version).objects.get(pk=version.pk).threshold_in_words
    assert f"found at least {math.floor(84.6)} of 100 malignant lesions" in words and "90 measured" in words
    assert "among those its threshold was chosen on" in words  # not clean: said so
    settings.LOCKED_TEST_LEDGER.write_text(json.dumps({**entry, "clean": True}) + "\n")
    words = type(version).objects.get(pk=version.pk).threshold_in_words
    assert "no part in training or in choosing this threshold" in words
