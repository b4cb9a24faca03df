"""Fit a new operating point for a model's weights without the locked test split, and score it there.

    python -m classifier.training.operatingpoint --model FILE --data DIR --out OP.json [--logits CACHE.npz]

The threshold, borderline band and early-decision cascade are fitted as training fits them
(classifier.training.validation.choose_and_report: the lower end of the 95% interval of sensitivity
reaches the target; the band's floor leaves at most 2% of melanomas below it), but on the validation
images outside the locked test split only; the test-time averaging and the calibration of the weights'
file are kept (monotone: they change no ranking). The file is written with the sha256 of the weights it
is for and of the model file it makes (classifier.operatingpoint.derive), and that model file is scored
once on the locked test split: its entry goes into the ledger as ``classifier.training.evaluate
--split locked-test`` writes it, beside what the weights' own operating point does on the same images.

The network's logits for the 8 views of each validation image are the slow part (about 30 minutes on
two cores): ``--logits`` keeps them in a file and reads them back on a second run.
"""

import argparse
import datetime
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("classifier.training.operatingpoint")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Fit an operating point for a model's weights on validation without "
                                "the locked test split; score it there.", add_help=add_help)
    p.add_argument("--model", required=True, help="the weights' model file (.safetensors); not changed")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (its split is remade)")
    p.add_argument("--out", required=True, help="the operating point file to write (<name>.operating-point.json)")
    p.add_argument("--logits", help="a cache of the validation images' 8-view logits (.npz): read, or written")
    p.add_argument("--target-sensitivity", type=float, default=None,
                   help="default: the one the model was trained for (else 0.90)")
    p.add_argument("--date", default=None, help="the version's date suffix (default: today, YYYYMMDD)")
    p.add_argument("--ledger", default=None, help="the locked test split's ledger (default: the shipped one)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    return p


def cached_view_logits(model_path, data_dir, cache, batch_size):
    """(metadata, validation samples, (n, 8) logits), from ``cache`` when it holds these images' logits."""
    from classifier.modelfile import file_sha256, read_metadata
    from classifier.training.calibrate import validation_view_logits
    from classifier.training.data import load_samples, split_as_recorded

    sha = file_sha256(model_path)
    if cache and Path(cache).is_file():
        saved = np.load(cache)
        meta = read_metadata(model_path)
        _, val = split_as_recorded(load_samples(data_dir), meta.training.get("recipe", {}))
        if str(saved["sha256"]) == sha and list(saved["paths"]) == [str(s.path) for s in val]:
            log.info("view logits of %d validation images read from %s", len(val), cache)
            return meta, val, saved["logits"]
        log.info("%s holds other images' or another model's logits: computed again", cache)
    _, meta, val, logits = validation_view_logits(model_path, data_dir, batch_size, "cpu")
    if cache:
        np.savez(cache, logits=logits, paths=np.array([str(s.path) for s in val]), sha256=sha)
    return meta, val, logits


def fit(meta, samples, logits, target) -> dict:
    """Threshold, band and cascade on ``samples`` (the selection images) under the weights' calibration."""
    from classifier.training import cascade, metrics, validation

    y = np.array([s.label for s in samples])
    z = logits.mean(axis=1) if meta.tta == "dihedral8" else logits[:, 0]
    p = validation.apply_calibration(z, meta.calibration)
    threshold = metrics.threshold_for_sensitivity_bound(y, p, target, validation.BOUND_LEVEL)
    op = validation.operating_point(y, p, threshold, samples=samples, target_sensitivity=target)
    early = cascade.fit(logits, meta.calibration, threshold, op["band"]) if meta.tta == "dihedral8" else {}
    return {"threshold": float(threshold), "operating_point": op, "cascade": early}


def probabilities(meta, logits, cascade=None) -> np.ndarray:
    """The worker's probabilities from all 8 views' logits (with the cascade's early decisions, if any)."""
    from classifier.training import validation

    if cascade is not None:
        z = cascade.decide_from_views(logits)[0]
    else:
        z = logits.mean(axis=1) if meta.tta == "dihedral8" else logits[:, 0]
    return validation.apply_calibration(z, meta.calibration)


def run(args) -> dict:
    import dataclasses

    from classifier import operatingpoint
    from classifier.artefacts import LOCKED_TEST_LEDGER, read_ledger
    from classifier.cascade import Cascade
    from classifier.modelfile import file_sha256
    from classifier.training.data import load_samples, locked_test_split
    from classifier.training.evaluate import locked_statement, score

    meta, val, logits = cached_view_logits(args.model, args.data, args.logits, args.batch_size)
    locked_paths = {s.path for s in locked_test_split(load_samples(args.data))}
    is_locked = np.array([s.path in locked_paths for s in val])
    if not is_locked.any():
        raise SystemExit(f"{args.data} has no locked test split inside the model's validation images")
    selection = [s for s, k in zip(val, is_locked) if not k]
    locked = [s for s, k in zip(val, is_locked) if k]
    target = args.target_sensitivity or meta.training.get("target_sensitivity") or 0.90
    fitted = fit(meta, selection, logits[~is_locked], target)
    date = args.date or datetime.date.today().strftime("%Y%m%d")
    op = {
        "format": operatingpoint.FORMAT,
        "version": f"{meta.weights_version}-op{date}",
        "weights": {"version": meta.weights_version, "sha256": file_sha256(args.model), "file": Path(args.model).name},
        **fitted,
        "fitted_on": {"data": Path(args.data).name, "images": len(selection),
                      "malignant": int(sum(s.label for s in selection)),
                      "split": "the weights' validation split without the locked test split",
                      "locked_test_left_out": True, "target_sensitivity": target,
                      "calibration": "the weights' own (kept)", "date": datetime.date.today().isoformat()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        op["model_sha256"] = operatingpoint.derived_sha256(args.model, op, tmp)
    Path(args.out).write_text(json.dumps(op, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s: version %s, threshold %.4f", args.out, op["version"], op["threshold"])

    # The locked test split: the new operating point (as the derived file decides, its cascade included)
    # and, for comparison, the weights' own on the same images.
    derived = dataclasses.replace(meta, **operatingpoint.header_changes(op, meta))
    y = np.array([s.label for s in locked])
    cascade = Cascade.from_metadata(derived)
    p = probabilities(derived, logits[is_locked], cascade)
    entry = score(y, p, locked, derived.threshold, logits[is_locked], derived, cascade, args.bootstrap)
    entry.update(locked_statement(y, p, locked, derived, derived.threshold), sha256=op["model_sha256"],
                 version=op["version"], model_version=op["version"], tta=derived.tta, runtime="torch",
                 split="locked-test")
    ledger = Path(args.ledger) if args.ledger else LOCKED_TEST_LEDGER
    if op["model_sha256"] in read_ledger(ledger):
        log.info("%s is in the ledger already: not scored twice", op["version"])
    else:
        with open(ledger, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
    from classifier.training.validation import held_out_statement

    before = held_out_statement(y, probabilities(meta, logits[is_locked], Cascade.from_metadata(meta)), locked,
                                {**(meta.operating_point or {}), "threshold": meta.threshold})
    return {"version": op["version"], "threshold": op["threshold"], "band": op["operating_point"]["band"],
            "model_sha256": op["model_sha256"], "selection": {k: op["operating_point"][k] for k in (
                "sensitivity", "sensitivity_ci", "specificity", "n_malignant", "n_benign", "band_share")},
            "cascade_mean_views": (op["cascade"].get("validation") or {}).get("mean_views"),
            "locked": {"new": entry["operating_point"], "weights_own": before, "headline_auc": entry["headline"]["auc"],
                       "auc": entry["auc"], "cascade": entry.get("cascade")}}


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from classifier.training.cli import run_and_print

    return run_and_print(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
