"""The shipping rule (issue 44, point 2): paired differences of two models on the same locked images."""

import numpy as np
import pytest

from classifier.training import paired
from classifier.training.data import Sample


def samples_for(y, headline_every=2):
    """Images of lesions of two images each; every other lesion in the headline (ISIC 2017 melanoma/nevus)."""
    out = []
    for i, label in enumerate(y):
        lesion = i // 2
        head = lesion % headline_every == 0
        out.append(Sample(path=f"{i}.jpg", label=int(label), group=f"lesion{lesion}",
                          source="isic2017" if head else "ham224",
                          diagnosis=("melanoma" if label else "nevus") if head else ("basal_cell_carcinoma" if label
                                                                                    else "dermatofibroma")))
    return out


def test_the_paired_interval_is_far_narrower_than_the_unpaired_ones():
    """Two models that share most of their error: the AUC difference is pinned down although each AUC is not."""
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    shared = rng.normal(size=400)
    a = 1.0 * y + shared
    b = 1.25 * y + shared + 0.1 * rng.normal(size=400)
    r = paired.paired_bootstrap(y, a, b, [f"l{i // 2}" for i in range(400)], paired.metrics.roc_auc, n_boot=500)
    assert r["candidate"] > r["baseline"] and r["delta"] == pytest.approx(r["candidate"] - r["baseline"], abs=1e-4)
    assert 0 < r["ci95"][0] < r["delta"] < r["ci95"][1]
    unpaired = paired.metrics.bootstrap_auc_ci(y, a, n_boot=500)
    assert r["ci95"][1] - r["ci95"][0] < 0.5 * (unpaired[1] - unpaired[0])


def test_the_rule_ships_a_clear_gain_and_refuses_a_loss_or_a_headline_drop():
    rng = np.random.default_rng(1)
    y = (rng.random(600) < 0.3).astype(int)
    s = samples_for(y)
    shared = rng.normal(size=600)
    base = 1.0 * y + shared
    better = 1.3 * y + shared
    verdict = paired.compare(y, paired.validation.sigmoid(base), paired.validation.sigmoid(better), s, 0.5, 0.5, 300)
    assert verdict["ships"] and verdict["auc"]["ci95"][0] > 0 and verdict["headline_images"] > 0
    assert verdict["images"] == 600 and verdict["lesions"] == 300
    same = paired.compare(y, base, base, s, 0.5, 0.5, 200)
    assert not same["ships"] and same["auc"]["delta"] == 0 and same["auc"]["ci95"] == [0.0, 0.0]
    # Better on all images, worse on the headline images: refused.
    head = paired.validation.headline_mask(s)
    mixed = np.where(head, 0.8 * y + shared, 3.0 * y + shared)
    refused = paired.compare(y, base, mixed, s, 0.5, 0.5, 300)
    assert refused["auc"]["ci95"][0] > 0 and refused["headline_auc"]["delta"] < -0.01 and not refused["ships"]


def test_sensitivity_and_specificity_are_each_at_the_models_own_threshold():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = samples_for(y)
    a = np.array([0.9, 0.8, 0.3, 0.2, 0.25, 0.1, 0.05, 0.6])
    b = a.copy()
    r = paired.compare(y, a, b, s, threshold_a=0.5, threshold_b=0.15, n_boot=50)
    assert r["sensitivity"]["baseline"] == 0.5 and r["sensitivity"]["candidate"] == 1.0
    assert r["specificity"]["baseline"] == 0.75 and r["specificity"]["candidate"] == 0.5
    assert r["thresholds"] == {"baseline": 0.5, "candidate": 0.15}


def test_the_verdict_goes_into_the_candidates_ledger_entry(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text('{"sha256": "aaa", "auc": 0.8}\n{"sha256": "bbb", "auc": 0.9}\n')
    paired.record(ledger, "bbb", {"ships": False})
    lines = ledger.read_text().splitlines()
    assert '"paired": [{"ships": false}]' in lines[1] and lines[0] == '{"sha256": "aaa", "auc": 0.8}'
    with pytest.raises(SystemExit, match="no entry"):
        paired.record(ledger, "ccc", {})


def test_the_command_scores_both_models_once_and_prints_the_verdict(tmp_path):
    """On the fixtures' locked images (4), two small real model files; their probabilities are cached by sha256."""
    import json
    import subprocess
    import sys

    from tests.builders import make_model_file
    from tests.conftest import FIXTURES, ROOT

    make_model_file(tmp_path / "a.safetensors", version="a", seed=1)
    make_model_file(tmp_path / "b.safetensors", version="b", seed=2)
    args = [sys.executable, "-m", "classifier.training.paired", "--baseline", str(tmp_path / "a.safetensors"),
            "--candidate", str(tmp_path / "b.safetensors"), "--data", str(FIXTURES), "--cache", str(tmp_path / "c"),
            "--bootstrap", "50"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["images"] == 4 and out["ships"] in (True, False) and "rule" in out
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout) == out
