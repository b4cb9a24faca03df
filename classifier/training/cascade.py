"""Fit a model's early-decision cascade (classifier.cascade) on its validation split.

At each stage but the last, an image's score is how far its running mean lies from its mean over all
8 views, in units of the cascade's scale (sigma = 1 + alpha |mean| + beta spread). The threshold's
margin is the largest score over the validation images: an image that stops there ends on the same
side of the threshold as the full average on every validation image, and a new image like them has a
larger score with probability at most 1 / (n + 1) (the split-conformal bound at its strictest), and
even then changes only if it also lies near the threshold. The band ends' margin is the same by
default (``band_quantile`` 1.0) or a high quantile of the scores. The stages, the order in which the
views are run, alpha and beta are the ones, of a small grid, that need the fewest views on validation.

Training, fine-tuning, soups and calibrate fit it with the rest of the operating point
(validation.choose_and_report), from the network's logits for all 8 views of every validation image;
``python -m classifier.training.calibrate --cascade-only`` fits it alone into an existing model file
(weights, version and operating point unchanged: the cascade only decides how many views an image
needs to reach the decision and band the full average gives).
"""

import dataclasses
import itertools
import math

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
    return tuple(sorted({probability_to_logit(float(threshold), calibration), *band_logits(band, calibration)}))


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
    t, ends = probability_to_logit(float(threshold), calibration), band_logits(band, calibration)
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
