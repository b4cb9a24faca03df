"""The whole network trained on a CPU as a long job (issue 44, point 3): stopped anywhere and resumed with one
command, to the same weights as a run that never stopped; progress with an ETA; the cheaper-epoch levers."""

import json
import signal
import subprocess
import sys
import time
from argparse import Namespace

import pytest
import torch

from classifier.training.train import EpochOrder, crop_size, freeze_blocks
from tests.conftest import FIXTURES, ROOT

ARGS = ["--data", str(FIXTURES), "--epochs", "1", "--image-size", "32", "--batch-size", "1", "--val-fraction", "0.34",
        "--warmup-epochs", "1", "--threads", "1", "--checkpoint-minutes", "0.000001", "--consistency", "0.5",
        "--aux-diagnosis", "0.5", "--balance-collections"]


def train(*args, **kw):
    return subprocess.run([sys.executable, "-m", "classifier.training.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kw)


def checkpoint(out):
    try:
        return torch.load(out / "checkpoint.pt", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None  # not written yet


def test_a_run_killed_inside_an_epoch_resumes_to_the_weights_of_one_that_never_stopped(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    r = train("--out", str(whole), *ARGS)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "classifier.training.train", "--out", str(broken), *ARGS], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # a checkpoint inside the epoch: kill it there, as a stop would
            c = checkpoint(broken)
            if c and (c.get("in_epoch") or {}).get("step", 0) >= 1:
                break
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint inside the epoch")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # One command resumes it: the run's own arguments come from args.json.
    r = train("--out", str(broken), "--resume")
    assert r.returncode == 0, r.stderr
    assert "of epoch 1" in r.stderr
    a, b = checkpoint(whole), checkpoint(broken)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["aux_head"][k], b["aux_head"][k]) for k in a["aux_head"])
    assert [json.loads(x)["epoch"] for x in (broken / "metrics.jsonl").read_text().splitlines()] == [1]
    progress = json.loads((broken / "progress.json").read_text())
    assert progress["epoch"] == 1 and progress["epochs"] == 1 and "eta_s" in progress and "images_per_s" in progress
    assert (broken / "model.safetensors").is_file()


def test_a_stop_between_the_best_epochs_checkpoint_and_its_export_exports_on_resume(tmp_path):
    out = tmp_path / "run"
    r = train("--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr
    (out / "model.safetensors").unlink()
    c = checkpoint(out)
    torch.save({**c, "export_pending": True}, out / "checkpoint.pt")
    r = train("--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and not checkpoint(out)["export_pending"]


def test_benchmark_steps_print_the_speed_and_write_nothing(tmp_path):
    out = tmp_path / "bench"
    r = train("--out", str(out), *ARGS, "--benchmark-steps", "2", "--freeze-blocks", "2")
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert line["freeze_blocks"] == 2 and line["images_per_s"] > 0 and line["steps"] == 2
    assert not (out / "checkpoint.pt").exists()


def test_the_epoch_order_is_a_function_of_seed_and_epoch_and_skips_what_was_done():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    for w in (None, weights):
        order = EpochOrder(5, seed=3, weights=w)
        order.set_epoch(2)
        full = list(order)
        again = EpochOrder(5, seed=3, weights=w)
        again.set_epoch(2, start=2)
        assert list(again) == full[2:] and len(again) == 3
        order.set_epoch(3)
        assert list(order) != full or w is not None  # another epoch, another shuffle
    order = EpochOrder(5, seed=3)
    order.set_epoch(0)
    assert sorted(order) == [0, 1, 2, 3, 4]


def test_freezing_blocks_and_progressive_crops():
    from classifier.training.builder import build_model

    model = build_model("vgg16")
    names = freeze_blocks(model, 2)
    assert names == [f"features.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in names)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in names)
    args = Namespace(image_size=224, progressive_from=128, progressive_epochs=0, epochs=8)
    assert [crop_size(args, e) for e in range(6)] == [128, 160, 192, 192, 224, 224]  # over half the run
    assert crop_size(Namespace(image_size=224, progressive_from=0, progressive_epochs=0, epochs=8), 0) == 224
