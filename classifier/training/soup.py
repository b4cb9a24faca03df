"""Average the weights of several fine-tunes of one model ("model soup", Wortsman et al., ICML 2022)
and fit the average's operating point on their shared validation split.

    python -m classifier.training.soup --models A.safetensors B.safetensors [...] --data DIR --out SOUP.safetensors

Runs that start from the same weights and differ only in their training seed (classifier.training.train
--train-seed) tend to end in one basin of the loss, where the average of their weights often scores
better than each of them while costing one network at inference (an ensemble costs one per
member). Whether it does here is measured, not assumed: the JSON printed gives the soup's
validation figures beside each ingredient's stored ones (two runs that differed only by a GPU's
nondeterminism gained nothing: docs/experiments.md).

The ingredients must agree on architecture, input size and normalisation and record the same
training and validation splits (labels fingerprints); else nothing is written. Batch-norm running
statistics (vgg16_bn) are averaged like the weights, an approximation; the ImageNet path (vgg16) has
none. The soup's test-time averaging, calibration, threshold, band and validation figures are fitted
as classifier.training.calibrate fits them; it gets its own version (from its weights) and no lesion check
(fit one with classifier.training.lesioncheck).
"""

import argparse
import dataclasses
import sys
from pathlib import Path


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Average the weights of fine-tunes of one model and fit the "
                                "average's operating point on their validation split.", add_help=add_help)
    p.add_argument("--models", nargs="+", required=True, help="two or more model files (.safetensors)")
    p.add_argument("--data", required=True, help="the dataset they were trained on (their split is remade)")
    p.add_argument("--out", required=True, help="the soup's model file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC intervals")
    return p


def average_states(states: list[dict]) -> dict:
    """The mean of each floating-point tensor (in fp32); integer tensors (batch-norm step counts) from
    the first state."""
    return {k: (sum(s[k].float() for s in states) / len(states)) if v.is_floating_point() else v
            for k, v in states[0].items()}


def summary(validation: dict) -> dict:
    """The figures a soup is judged by, from a model file's stored validation metrics."""
    headline = validation.get("headline", {})
    return {"headline_auc": headline.get("auc"), "headline_auc_ci95": headline.get("auc_ci95"),
            **{k: validation.get(k) for k in ("auc", "auc_ci95", "sensitivity", "specificity",
                                               "specificity_at_95_sensitivity", "dihedral_flip_rate")}}


def check_compatible(metas) -> None:
    """ModelFileError unless every ingredient is the same network trained on the same split."""
    from classifier.modelfile import ModelFileError

    def key(m):
        return (m.arch, m.input_size, tuple(m.mean), tuple(m.std), m.colour_constancy,
                m.training.get("train", {}).get("labels_sha256"), m.training.get("validation", {}).get("labels_sha256"))

    first = metas[0]
    if key(first)[-1] is None:
        raise ModelFileError(f"{first.version} records no validation split")
    for m in metas[1:]:
        if key(m)[:5] != key(first)[:5]:
            raise ModelFileError(f"{m.version} is not the same network as {first.version} ({m.arch}"
                                 f" {m.input_size} px vs {first.arch} {first.input_size} px, or another"
                                 " normalisation or colour constancy)")
        if key(m)[5:] != key(first)[5:]:
            raise ModelFileError(f"{m.version} was trained or validated on another split than {first.version}")


def make_soup(model_paths, data_dir, out, batch_size=32, device="cpu", n_boot=1000) -> dict:
    """Write the soup to ``out`` and return a report; raises ModelFileError, DatasetError or OSError
    (``out`` is then untouched)."""
    from classifier.model import model_for_file
    from classifier.modelfile import ModelFileError, load_model_file, read_metadata, save_model_file
    from classifier.training.calibrate import recalibrate

    if len(model_paths) < 2:
        raise ModelFileError("a soup needs at least two model files")
    loaded = [load_model_file(p) for p in model_paths]
    metas = [m for _, m in loaded]
    if len({m.version for m in metas}) < len(metas):
        raise ModelFileError("the same model version is given twice")
    check_compatible(metas)
    model = model_for_file(metas[0])
    model.load_state_dict(average_states([s for s, _ in loaded]))
    ingredients = [{"version": m.version, "epoch": m.training.get("epoch"),
                    "train_seed": m.training.get("recipe", {}).get("train_seed"),
                    "validation": summary(m.metrics.get("validation", {}))} for m in metas]
    first = metas[0]
    training = {k: v for k, v in first.training.items() if k not in ("epoch", "operating_point_fitted_on")}
    meta = dataclasses.replace(first, version="", created="", metrics={}, lesion_check={},
                               training={**training, "soup": {"method": "uniform", "ingredients": ingredients}})
    out = Path(out)
    tmp = out.with_suffix(".tmp.safetensors")
    try:
        meta = save_model_file(tmp, model, meta)
        fitted = recalibrate(tmp, data_dir, first.training.get("target_sensitivity"), batch_size, device, n_boot)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"version": meta.version, "out": str(out), "ingredients": ingredients,
            "validation": summary(read_metadata(out).metrics["validation"]),
            "threshold": fitted["threshold"], "tta": fitted["tta"]}


def main(args) -> int:
    from classifier.training.cli import run_and_print

    return run_and_print(lambda: make_soup(args.models, args.data, args.out, args.batch_size, args.device,
                                           args.bootstrap))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
