"""Is a candidate better than the shipped model? Paired figures on the same locked images, and the shipping rule.

    python -m classifier.training.paired --candidate FILE [--candidate-operating-point OP.json]
        [--baseline FILE] [--baseline-operating-point OP.json] --data DIR [--cache DIR] [--ledger FILE]

Both models score the locked test split's images (the worker's probabilities: 8 views where the model
averages them, its own cascade, calibration and threshold). Unpaired intervals on 39 headline melanomas
(about ±0.08) hide any real gain of a few hundredths; the difference of two models on the same images
varies far less. The lesion is the unit resampled (a lesion's images stay together, as in the split):

- the AUC difference (candidate - baseline) on all locked images and on the headline (melanoma against
  nevus + seborrheic keratosis, ISIC 2017 part), with paired bootstrap 95% intervals;
- the differences in sensitivity and specificity, each model at its own threshold, with paired intervals.

The rule (docs/models.md): a candidate ships when the paired 95% interval of the all-image AUC difference
lies above zero and the headline's paired difference is not below -0.01. The verdict is printed and, with
--ledger, recorded in the candidate's ledger entry (``paired``). Each model's probabilities are kept in
--cache by the sha256 of its file, so a second comparison does not run either again.
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from classifier.training import metrics, validation

log = logging.getLogger("classifier.training.paired")

ALL_AUC_LOWER_ABOVE = 0.0  # the paired 95% interval of the all-image AUC difference lies above this
HEADLINE_NOT_BELOW = -0.01  # and the headline's paired difference is not below this


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Paired comparison of a candidate with the shipped model on the locked "
                                "test split, and the shipping rule.", add_help=add_help)
    p.add_argument("--candidate", required=True, help="the candidate model file")
    p.add_argument("--candidate-operating-point", help="an operating point file for the candidate's weights")
    p.add_argument("--baseline", default=None, help="default: the shipped starter with its operating point")
    p.add_argument("--baseline-operating-point", default=None)
    p.add_argument("--data", required=True, help="the development set (its locked test split is used)")
    p.add_argument("--cache", default="runs/paired", help="each model's locked probabilities, by file sha256")
    p.add_argument("--ledger", default=None, help="record the verdict in the candidate's entry of this ledger")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    return p


def paired_bootstrap(y, a, b, groups, stat, n_boot=2000, seed=0, level=0.95) -> dict:
    """stat(y, b) - stat(y, a) with its percentile interval, resampling ``groups`` (lesions) with replacement:
    both models see the same resampled images."""
    y, a, b, groups = np.asarray(y), np.asarray(a, float), np.asarray(b, float), np.asarray(groups)
    point = stat(y, b) - stat(y, a)
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
        d = stat(y[idx], b[idx]) - stat(y[idx], a[idx])
        if np.isfinite(d):
            deltas.append(d)
    lo, hi = np.percentile(deltas, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if deltas else (np.nan, np.nan)
    return {"baseline": round(float(stat(y, a)), 4), "candidate": round(float(stat(y, b)), 4),
            "delta": round(float(point), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "resamples": len(deltas)}


def compare(y, a, b, samples, threshold_a, threshold_b, n_boot=2000) -> dict:
    """The paired figures and the verdict (``ships``) of candidate probabilities ``b`` against baseline ``a``."""
    y = np.asarray(y).astype(int)
    groups = [s.group for s in samples]
    head = validation.headline_mask(samples)

    def auc(yy, pp):
        return metrics.roc_auc(yy, pp)

    def rate(positive):
        """Sensitivity (or specificity) of probabilities whose threshold has been moved to 0.5."""
        def f(yy, pp):
            sel = (yy == 1) if positive else (yy == 0)
            if not sel.any():
                return float("nan")
            called = pp[sel] >= 0.5
            return float(called.mean() if positive else (~called).mean())
        return f

    # Each model at its own threshold: its probabilities shifted so that the threshold is 0.5 (p >= t exactly
    # where p - t + 0.5 >= 0.5), so that one statistic serves both sides of the paired resample.
    sa, sb = 0.5 + np.asarray(a, float) - threshold_a, 0.5 + np.asarray(b, float) - threshold_b
    sens = paired_bootstrap(y, sa, sb, groups, rate(True), n_boot)
    spec = paired_bootstrap(y, sa, sb, groups, rate(False), n_boot)
    everything = paired_bootstrap(y, a, b, groups, auc, n_boot)
    headline = paired_bootstrap(y[head], np.asarray(a)[head], np.asarray(b)[head], np.asarray(groups)[head], auc,
                                n_boot)
    ships = everything["ci95"][0] > ALL_AUC_LOWER_ABOVE and headline["delta"] >= HEADLINE_NOT_BELOW
    return {"images": int(len(y)), "headline_images": int(head.sum()), "lesions": len(set(groups)),
            "auc": everything, "headline_auc": headline, "sensitivity": sens, "specificity": spec,
            "thresholds": {"baseline": float(threshold_a), "candidate": float(threshold_b)},
            "rule": f"ships when the paired 95% interval of the all-image AUC difference lies above "
                    f"{ALL_AUC_LOWER_ABOVE:g} and the headline's paired difference is not below {HEADLINE_NOT_BELOW:g}",
            "ships": bool(ships)}


def locked_probabilities(model_path, data, cache_dir, batch_size=32) -> tuple[list, np.ndarray, float, str]:
    """(locked samples, the worker's probabilities, threshold, sha256) of a model file, from the cache when
    it holds them."""
    from classifier.modelfile import file_sha256
    from classifier.predictor import Predictor
    from classifier.training.data import load_samples, locked_test_split
    from classifier.training.evaluate import predict_all

    samples = locked_test_split(load_samples(data))
    sha = file_sha256(model_path)
    cache = Path(cache_dir) / f"{sha}.npz"
    predictor = Predictor.from_file(model_path, device="cpu", runtime="torch")
    if cache.is_file():
        saved = np.load(cache)
        if list(saved["paths"]) == [str(s.path) for s in samples]:
            return samples, saved["probabilities"], predictor.threshold, sha
    p, _, _ = predict_all(predictor, samples, batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, probabilities=p, paths=np.array([str(s.path) for s in samples]))
    return samples, p, predictor.threshold, sha


def run(args) -> dict:
    from classifier import operatingpoint
    from classifier.modelfile import DEFAULT_MODEL_PATH

    if args.baseline is None:
        args.baseline = str(DEFAULT_MODEL_PATH)
        args.baseline_operating_point = args.baseline_operating_point or str(
            operatingpoint.DEFAULT_OPERATING_POINT_PATH)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, path, op in (("baseline", args.baseline, args.baseline_operating_point),
                               ("candidate", args.candidate, args.candidate_operating_point)):
            files[name] = operatingpoint.derive(path, op, Path(tmp) / f"{name}.safetensors") if op else Path(path)
        samples, a, ta, sha_a = locked_probabilities(files["baseline"], args.data, args.cache, args.batch_size)
        _, b, tb, sha_b = locked_probabilities(files["candidate"], args.data, args.cache, args.batch_size)
    y = [s.label for s in samples]
    result = {"baseline_sha256": sha_a, "candidate_sha256": sha_b,
              **compare(y, a, b, samples, ta, tb, args.bootstrap)}
    if args.ledger:
        record(args.ledger, sha_b, result)
    return result


def record(ledger, sha256: str, paired: dict) -> None:
    """Add ``paired`` to the candidate's ledger entry (its first line for that sha256); the rest is kept."""
    path = Path(ledger)
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        entry = json.loads(line)
        if entry.get("sha256") == sha256:
            entry.setdefault("paired", []).append(paired)
            lines[i] = json.dumps(entry, sort_keys=True)
            path.write_text("\n".join(lines) + "\n")
            return
    raise SystemExit(f"{sha256[:12]}… has no entry in {ledger}: score it first (evaluate --split locked-test)")


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from classifier.training.cli import run_and_print

    return run_and_print(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
