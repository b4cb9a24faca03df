"""Fit a model's early-decision cascade (classifier.cascade) on its validation split.

    python -m classifier.training.cascade --model FILE --data DIR [--check DIR]

At each stage but the last, an image's score is how far its running mean lies from its mean over all
8 views, in units of the cascade's scale (sigma = 1 + alpha |mean| + beta spread). The threshold's
margin is the largest score over the validation images: an image that stops there ends on the same
side of the threshold as the full average on every validation image, and a new image like them has a
larger score with probability at most 1 / (n + 1) (the split-conformal bound at its strictest), and
even then changes only if it also lies near the threshold. The band ends' margin is the same by
default (``band_quantile`` 1.0) or a high quantile of the scores. The stages, the order in which the
views are run, alpha and beta are the ones, of a small grid, that need the fewest views on validation.

The command refits the cascade of an existing model file in place (weights, version and operating
point unchanged: the cascade only decides how many views an image needs to reach the decision and
band the full average gives), from the network's logits for all 8 views of every validation image;
training, fine-tuning, soups and calibrate fit it with the rest of the operating point
(validation.choose_and_report). ``--check DIR`` also reports what it does on another labelled set
(the shipped check set), never used to fit it.
"""

import argparse
import dataclasses
import datetime
import itertools
import math
import sys

import numpy as np

from classifier.cascade import Cascade, band_logits, probability_to_logit
from classifier.presets import DIHEDRAL_VIEWS

STAGINGS = ((1, 2, 3, 4, DIHEDRAL_VIEWS), (1, 2, 4, DIHEDRAL_VIEWS), (1, 4, DIHEDRAL_VIEWS), (2, 4, DIHEDRAL_VIEWS))
# Orders of the views (classifier.presets.dihedral's k; k < 4 turns by quarter turns, k >= 4 mirrors
# first): the four rotations first, a half turn and the mirror images first, and the mirror image second.
ORDERS = ((0, 1, 2, 3, 4, 5, 6, 7), (0, 2, 4, 6, 1, 3, 5, 7), (0, 4, 2, 6, 1, 5, 3, 7))
ALPHAS = (0.0, 0.05, 0.1, 0.2)
BETAS = (0.0, 0.5, 1.0)


def edges_for(calibration: dict, threshold: float, band) -> tuple[float, ...]:
    """Threshold and band ends as logits, ascending."""
    return tuple(sorted({probability_to_logit(float(threshold), calibration), *band_logits(band or (), calibration)}))


def scores(view_logits: np.ndarray, order, stages, alpha: float, beta: float) -> list[np.ndarray]:
    """Per stage but the last: each image's |running mean - full mean| / sigma."""
    z = np.asarray(view_logits, dtype=np.float64)[:, list(order)]
    full = z.mean(1)
    out = []
    for v in stages[:-1]:
        seen = z[:, :v]
        mean = seen.sum(1) / v
        out.append(np.abs(mean - full) / (1 + alpha * np.abs(mean) + beta * (seen.max(1) - seen.min(1))))
    return out


def cascade_for(view_logits, order, stages, alpha, beta, threshold, band, band_quantile=1.0) -> Cascade:
    s = scores(view_logits, order, stages, alpha, beta)
    return Cascade(tuple(stages), tuple(float(x.max()) for x in s),
                   tuple(float(np.quantile(x, band_quantile, method="higher")) for x in s),
                   tuple(order), threshold, tuple(band), alpha, beta)


def agreement(cascade: Cascade, view_logits: np.ndarray) -> dict:
    """What the cascade does against the full average on these images: decisions and band assignments
    that change, the share of images stopping at each stage, the mean views per image."""
    full = np.asarray(view_logits, dtype=np.float64).mean(1)
    z, used = cascade.decide_from_views(view_logits)
    edges = np.array(sorted({cascade.threshold, *cascade.band}))

    def side(x):
        return (x[:, None] >= edges[None, :]).sum(1)  # which interval between the edges

    n = len(z)
    return {
        "images": int(n),
        "decisions_changed": int(((z >= cascade.threshold) != (full >= cascade.threshold)).sum()),
        "bands_changed": int((side(z) != side(full)).sum()),  # the decision or the band assignment
        "mean_views": round(float(used.mean()), 3) if n else None,
        "all_views_share": round(float(np.mean(used == cascade.stages[-1])), 4) if n else None,
        "stopped_at": {str(v): round(float(np.mean(used == v)), 4) for v in cascade.stages} if n else {},
        "largest_logit_change": round(float(np.abs(z - full).max()), 4) if n else None,
    }


def fit(view_logits, calibration: dict, threshold: float, band, band_quantile: float = 1.0) -> dict:
    """The cascade record for a model file's metadata (``ModelMetadata.cascade``): stages, margins,
    order, sigma's alpha and beta, and what it did on the images it was fitted on."""
    view_logits = np.asarray(view_logits, dtype=np.float64)
    t, ends = probability_to_logit(float(threshold), calibration), band_logits(band or (), calibration)
    best = None
    for stages, order, alpha, beta in itertools.product(STAGINGS, ORDERS, ALPHAS, BETAS):
        cascade = cascade_for(view_logits, order, stages, alpha, beta, t, ends, band_quantile)
        views = float(cascade.decide_from_views(view_logits)[1].mean())
        if best is None or views < best[0] - 1e-9:
            best = (views, cascade)
    # Stored rounded up to 1e-6: the largest score stays inside the margin.
    up = tuple(math.ceil(m * 1e6) / 1e6 for m in best[1].margins)
    band_up = tuple(math.ceil(m * 1e6) / 1e6 for m in best[1].band_margins)
    cascade = dataclasses.replace(best[1], margins=up, band_margins=band_up)
    return {
        "stages": list(cascade.stages),
        "margins": list(cascade.margins),
        "band_margins": list(cascade.band_margins),
        "order": list(cascade.order),
        "alpha": cascade.alpha,
        "beta": cascade.beta,
        "band_quantile": band_quantile,
        "margin_definition": (f"per stage, the largest |running mean - 8-view mean| / sigma over the "
                              f"{len(view_logits)} validation images (threshold)"
                              + ("" if band_quantile == 1.0 else f"; its {band_quantile:g} quantile (band ends)")),
        "validation": agreement(cascade, view_logits),
    }


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Fit a model file's early-decision cascade on its validation split "
                                "(the file is rewritten in place; weights, version and operating point kept).",
                                add_help=add_help)
    p.add_argument("--model", required=True, help="model file (.safetensors), rewritten in place")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (its split is remade)")
    p.add_argument("--check", help="a labelled folder to report the cascade on as well (e.g. classifier/checkset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return p


def all_view_logits(model, samples, meta, batch_size: int, device) -> np.ndarray:
    from classifier.presets import ClassificationPresetEval
    from classifier.training.train import CachedImages, make_loader, view_logits

    size = meta.input_size
    loader = make_loader(CachedImages(samples, size, ClassificationPresetEval(size, mean=meta.mean, std=meta.std)),
                         batch_size, shuffle=False)
    return view_logits(model.to(device), loader, device)


def refit(model_path, data_dir, check_dir=None, batch_size=32, device="cpu") -> dict:
    """Fit and store the cascade of ``model_path``; return the record (and the check set's figures)."""
    import torch

    from classifier.model import load_classifier
    from classifier.modelfile import replace_metadata
    from classifier.training.data import DatasetError, fingerprint, load_samples, split_as_recorded

    model, meta = load_classifier(model_path)
    if meta.views <= 1:
        raise DatasetError(f"{meta.version} decides on one view: it has no views to save")
    _, val = split_as_recorded(load_samples(data_dir), meta.training.get("recipe", {}))
    recorded = meta.training.get("validation", {}).get("labels_sha256")
    if recorded and fingerprint(val)["labels_sha256"] != recorded:
        raise DatasetError(f"{data_dir} does not give the validation split {meta.version} records")
    dev = torch.device(device)
    band = (meta.operating_point or {}).get("band")
    record = fit(all_view_logits(model, val, meta, batch_size, dev), meta.calibration, meta.threshold, band)
    record["fitted_on"] = {"data": str(data_dir), "images": len(val), "date": datetime.date.today().isoformat()}
    out = {"version": meta.version, "cascade": record}
    if check_dir:
        samples = [s for s in load_samples(check_dir) if s.split != "train"]
        cascade = Cascade.from_spec(record, probability_to_logit(meta.threshold, meta.calibration),
                                    band_logits(band or (), meta.calibration))
        record["check"] = {"data": str(check_dir),
                           **agreement(cascade, all_view_logits(model, samples, meta, batch_size, dev))}
    replace_metadata(model_path, cascade=record)
    return out


def main(args) -> int:
    from classifier.training.cli import run_and_print

    return run_and_print(lambda: refit(args.model, args.data, args.check, args.batch_size, args.device))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
