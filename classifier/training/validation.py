"""What the validation split says about a model: figures per source and diagnosis, the headline
(melanoma against nevus + seborrheic keratosis on the ISIC 2017 part), stability under the 8
rotations/mirror images, calibration, and the operating point stored with the model."""

import numpy as np

from classifier.training import metrics

HEADLINE_SOURCE = "isic2017"
HEADLINE_POSITIVE = {"melanoma"}
HEADLINE_NEGATIVE = {"nevus", "seborrheic_keratosis"}


def headline_mask(samples) -> np.ndarray:
    """Images of the headline comparison: melanoma, nevus or seborrheic keratosis from the ISIC 2017 part."""
    return np.array([s.source == HEADLINE_SOURCE and s.diagnosis in HEADLINE_POSITIVE | HEADLINE_NEGATIVE
                     for s in samples])


def headline_and_pooled(y, scores, samples) -> dict:
    """The two AUCs a training log follows each epoch (scores may be logits: AUC only needs their order)."""
    y, scores = np.asarray(y), np.asarray(scores)
    m = headline_mask(samples)
    return {"auc": round(metrics.roc_auc(y, scores), 5),
            "headline_auc": round(metrics.roc_auc(y[m], scores[m]), 5) if m.any() else float("nan")}


# Statistics -------------------------------------------------------------------------------------

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE with equal-width bins: the bin-size-weighted mean |observed share - mean probability|."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(y[which == b].mean() - p[which == b].mean()) * (which == b).sum()
                     for b in range(bins) if (which == b).any()) / len(y))


def brier(y, p) -> float:
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def fit_platt(logits, y, iterations: int = 100) -> dict:
    """Platt scaling, p = sigmoid(scale * logit + bias), fitted by Newton's method on the log loss.

    A temperature alone (bias 0) cannot undo the shift that a class-weighted loss puts into the
    logits, so the bias is fitted too. Both are monotone maps: AUC and rankings are unchanged.
    Each Newton step is halved until the loss goes down: a full step from (1, 0) overshoots when the
    logits are large (an over-confident network) and the plain iteration then runs off to infinity."""
    z, y = np.asarray(logits, dtype=float), np.asarray(y, dtype=float)

    def loss(a, b):
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - y * s))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = sigmoid(a * z + b)
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        w = p * (1 - p) + 1e-12
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-12 and loss(a - t * step[0], b - t * step[1]) > current:
            t /= 2
        a, b = a - t * step[0], b - t * step[1]
        current = loss(a, b)
        if np.abs(t * step).max() < 1e-10:
            break
    return {"method": "platt", "scale": float(a), "bias": float(b)}


def apply_calibration(logits, calibration: dict | None) -> np.ndarray:
    calibration = calibration or {}
    return sigmoid(calibration.get("scale", 1.0) * np.asarray(logits, dtype=float) + calibration.get("bias", 0.0))


def cross_fitted_calibration(logits, y, groups, folds: int = 5) -> np.ndarray:
    """Each image's calibrated probability from a Platt fit on the other folds (folds by lesion):
    the calibration error of a fit that has not seen the image it is measured on."""
    import zlib

    fold = np.array([zlib.crc32(str(g).encode()) % folds for g in groups])
    out = np.empty(len(y))
    for f in range(folds):
        held = fold == f
        out[held] = apply_calibration(
            np.asarray(logits)[held], fit_platt(np.asarray(logits)[~held], np.asarray(y)[~held])
        )
    return out


# Rotations and mirror images -----------------------------------------------------------------------

def dihedral_composition() -> np.ndarray:
    """table[g, k] = the view index of dihedral(dihedral(x, g), k), measured on a small asymmetric array."""
    import torch

    from classifier.presets import DIHEDRAL_VIEWS, dihedral

    base = torch.arange(9.0).view(3, 3)
    views = [dihedral(base, k) for k in range(DIHEDRAL_VIEWS)]
    table = np.zeros((DIHEDRAL_VIEWS, DIHEDRAL_VIEWS), dtype=int)
    for g in range(DIHEDRAL_VIEWS):
        for k in range(DIHEDRAL_VIEWS):
            composed = dihedral(dihedral(base, g), k)
            table[g, k] = next(i for i, v in enumerate(views) if torch.equal(v, composed))
    return table


def decisions_per_orientation(view_logits, tta: str, calibration, threshold) -> np.ndarray:
    """(n, 8) decisions the model would give for each of the 8 rotated/mirrored uploads of each image.

    ``view_logits[:, k]`` is the network's logit for view k. Uploading view g and averaging over the
    8 views (tta "dihedral8") averages the logits of views table[g, :], a permutation of all 8;
    without averaging, the upload's logit is view g's own."""
    view_logits = np.asarray(view_logits, dtype=float)
    if tta == "dihedral8":
        table = dihedral_composition()
        z = np.stack([view_logits[:, table[g]].mean(axis=1) for g in range(view_logits.shape[1])], axis=1)
    else:
        z = view_logits
    return apply_calibration(z, calibration) >= threshold


def flip_rate(decisions) -> float:
    """Share of images whose decision is not the same in all orientations."""
    d = np.asarray(decisions)
    return float(np.mean(d.any(axis=1) & ~d.all(axis=1)))


# Reports -------------------------------------------------------------------------------------------

def _auc_with_ci(y, p, n_boot) -> dict:
    y = np.asarray(y)
    if y.all() or not y.any():
        return {"auc": None, "auc_ci95": None}
    return {"auc": round(metrics.roc_auc(y, p), 4),
            "auc_ci95": [round(v, 4) for v in metrics.bootstrap_auc_ci(y, p, n_boot=n_boot)]}


def _rate(hits, n):
    return round(float(hits) / n, 4) if n else None


def group_report(y, p, samples, threshold, n_boot: int = 1000) -> dict:
    """AUC (95% CI) and the decision rates at ``threshold`` per source and per diagnosis, and the
    headline. Per diagnosis, the AUC pits a malignant diagnosis against every benign image and a
    benign diagnosis against every malignant image."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, dtype=float)
    called = p >= threshold
    sources, diagnoses = np.array([s.source for s in samples]), np.array([s.diagnosis for s in samples])
    per_source = {}
    for name in sorted(set(sources)):
        m = sources == name
        per_source[name or "(none)"] = {
            "n": int(m.sum()), "n_malignant": int(y[m].sum()), **_auc_with_ci(y[m], p[m], n_boot),
            "sensitivity": _rate((called & y & m).sum(), (y & m).sum()),
            "specificity": _rate((~called & ~y & m).sum(), (~y & m).sum()),
        }
    per_diagnosis = {}
    for name in sorted(set(diagnoses) - {""}):
        d = diagnoses == name
        malignant = bool(y[d].all())
        pair = d | (~y if malignant else y)
        per_diagnosis[name] = {
            "n": int(d.sum()), "label": "malignant" if malignant else "benign",
            "called_malignant": _rate((called & d).sum(), d.sum()),
            **_auc_with_ci(y[pair], p[pair], n_boot),
        }
    mel_vs = np.isin(diagnoses, list(HEADLINE_POSITIVE | HEADLINE_NEGATIVE))
    head = headline_mask(samples)
    return {
        "per_source": per_source,
        "per_diagnosis": per_diagnosis,
        "melanoma_vs_nevus_sk": {"n": int(mel_vs.sum()), "n_melanoma": int((mel_vs & y).sum()),
                                 **_auc_with_ci(y[mel_vs], p[mel_vs], n_boot)},
        "headline": {"definition": "melanoma vs nevus + seborrheic keratosis, ISIC 2017 part",
                     "n": int(head.sum()), "n_melanoma": int((head & y).sum()),
                     "sensitivity": _rate((called & y & head).sum(), (y & head).sum()),
                     "specificity": _rate((~called & ~y & head).sum(), (~y & head).sum()),
                     **_auc_with_ci(y[head], p[head], n_boot)},
    }


def held_out_statement(y, p, samples, op: dict, level: float = 0.95) -> dict:
    """What a model's operating point does on images that chose nothing (the locked test split): the
    sensitivity and specificity at its threshold with exact (Clopper-Pearson) intervals, the share
    of melanomas below its borderline band (shown as confidently benign) and the share of images in
    the band. The lower end of the sensitivity interval is the figure a result page may state."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, dtype=float)
    c = metrics.confusion(y, p, op["threshold"])
    lo, hi = op.get("band") or (op["threshold"], op["threshold"])
    melanoma = np.array([s.diagnosis == "melanoma" for s in samples])
    below = int((melanoma & (p < lo)).sum())
    return {
        "threshold": float(op["threshold"]), "level": level,
        "sensitivity": _rate(c["tp"], c["tp"] + c["fn"]),
        "sensitivity_ci": [round(v, 4) for v in metrics.binomial_interval(c["tp"], c["tp"] + c["fn"], level)],
        "specificity": _rate(c["tn"], c["tn"] + c["fp"]),
        "specificity_ci": [round(v, 4) for v in metrics.binomial_interval(c["tn"], c["tn"] + c["fp"], level)],
        "n_malignant": int(y.sum()), "n_benign": int((~y).sum()),
        "melanomas": int(melanoma.sum()), "melanomas_below_band": below,
        "melanomas_below_band_share": _rate(below, melanoma.sum()),
        "band_share": _rate(((p >= lo) & (p < hi)).sum(), len(p)),
    }


# How the operating point is fitted: the threshold's sensitivity is a lower confidence bound on
# held-out images, and the band's lower edge leaves at most this share of melanomas below it.
BOUND_LEVEL = 0.95
MELANOMA_BELOW_BAND = 0.02


def band_floor(p, samples, y, share: float = MELANOMA_BELOW_BAND) -> float:
    """The band's lower edge: the split-conformal bound that leaves at most ``share`` of new melanomas
    like these below it. With n melanomas it is the k-th lowest melanoma probability, k = floor(share
    (n + 1)) (at least the lowest), placed halfway to the next lower probability of any image; a new
    exchangeable melanoma falls below it with probability at most k / (n + 1). Without melanomas the
    malignant images stand in."""
    p, y = np.asarray(p, dtype=float), np.asarray(y).astype(bool)
    melanoma = np.array([s.diagnosis == "melanoma" for s in samples]) if samples is not None else y
    scores = np.sort(p[melanoma if melanoma.any() else y])
    if not len(scores):
        return float("nan")
    k = max(1, int(np.floor(share * (len(scores) + 1))))
    edge = scores[k - 1]
    below = p[p < edge]
    return float((edge + below.max()) / 2) if len(below) else float(edge)


def operating_point(y, p, threshold, band_sensitivities=(0.97, 0.80), samples=None,
                    target_sensitivity: float | None = None) -> dict:
    """The threshold's validation sensitivity and specificity, and the borderline band around it:
    the probabilities between the thresholds that reach the two ``band_sensitivities``; a result
    in the band is one a modest change of the operating point would decide the other way.

    Given ``samples`` and the ``target_sensitivity`` the threshold was fitted for (as
    ``choose_and_report`` fits it: the lower end of the sensitivity's 95% interval at the target),
    the band's lower edge is also low enough to leave at most 2% of melanomas below it
    (``band_floor``), and the record says what the threshold's figure means."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, dtype=float)
    c = metrics.confusion(y, p, threshold)
    lo = min(metrics.threshold_for_sensitivity(y, p, band_sensitivities[0]), threshold)
    hi = max(metrics.threshold_for_sensitivity(y, p, band_sensitivities[1]), threshold)
    definition = (f"probabilities between the thresholds reaching {band_sensitivities[0]:.0%} and "
                  f"{band_sensitivities[1]:.0%} sensitivity on validation")
    extra = {}
    if samples is not None and target_sensitivity is not None:
        lo = min(lo, band_floor(p, samples, y))
        definition += f", and below it at most {MELANOMA_BELOW_BAND:.0%} of melanomas (a conformal bound)"
        tp, n = c["tp"], c["tp"] + c["fn"]
        extra = {"target_sensitivity": target_sensitivity, "bound_level": BOUND_LEVEL,
                 "sensitivity_ci": [round(v, 4) for v in metrics.binomial_interval(tp, n, BOUND_LEVEL)],
                 "threshold_definition": (f"the lower end of the {BOUND_LEVEL:.0%} interval of sensitivity on "
                                          f"validation reaches {target_sensitivity:.0%}")}
    in_band = (p >= lo) & (p < hi)
    return {
        "threshold": float(threshold),
        "sensitivity": _rate(c["tp"], c["tp"] + c["fn"]),
        "specificity": _rate(c["tn"], c["tn"] + c["fp"]),
        "n_malignant": int(y.sum()), "n_benign": int((~y).sum()),
        "band": [float(lo), float(hi)],
        "band_definition": definition,
        "band_share": _rate(in_band.sum(), len(p)),
        **extra,
    }


def choose_and_report(y, view_logits, samples, target_sensitivity=0.90, flip_target=0.02, n_boot=1000) -> dict:
    """From the network's logits for the 8 views of each validation image: whether to average the
    views (when a single view's decisions flip across orientations more often than ``flip_target``)
    and, if so, the cascade that decides early where the other views cannot change the result,
    the Platt calibration of the chosen logit, the threshold (the fewest positive calls at which the
    lower end of the 95% Clopper-Pearson interval of sensitivity reaches ``target_sensitivity``:
    a threshold fitted to the point estimate found 70-74% of malignant lesions on new images where
    validation said 90%), the operating point, and the validation figures to store with the model."""
    y = np.asarray(y)
    view_logits = np.asarray(view_logits, dtype=float)
    single = view_logits[:, 0]
    single_cal = fit_platt(single, y)
    single_thr = metrics.threshold_for_sensitivity_bound(y, apply_calibration(single, single_cal),
                                                         target_sensitivity, BOUND_LEVEL)
    single_flips = flip_rate(decisions_per_orientation(view_logits, "none", single_cal, single_thr))
    tta = "dihedral8" if single_flips > flip_target else "none"
    z = view_logits.mean(axis=1) if tta == "dihedral8" else single
    calibration = fit_platt(z, y)
    p_raw, p = sigmoid(z), apply_calibration(z, calibration)
    threshold = metrics.threshold_for_sensitivity_bound(y, p, target_sensitivity, BOUND_LEVEL)
    flips = flip_rate(decisions_per_orientation(view_logits, tta, calibration, threshold))
    cross = cross_fitted_calibration(z, y, [s.group for s in samples])
    validation = metrics.binary_metrics(y, p, threshold, n_boot=n_boot)
    validation.update(group_report(y, p, samples, threshold, n_boot))
    validation.update({
        "tta": tta,
        "dihedral_flip_rate": round(flips, 4),
        "single_view_flip_rate": round(single_flips, 4),
        "single_view_auc": round(metrics.roc_auc(y, single), 4),
        "calibration": {
            "ece_before": round(expected_calibration_error(y, p_raw), 4),
            "ece_after": round(expected_calibration_error(y, p), 4),
            "ece_after_cross_fitted": round(expected_calibration_error(y, cross), 4),
            "brier_before": round(brier(y, p_raw), 4),
            "brier_after": round(brier(y, p), 4),
            "brier_after_cross_fitted": round(brier(y, cross), 4),
            "bins": 10,
        },
    })
    op = operating_point(y, p, threshold, samples=samples, target_sensitivity=target_sensitivity)
    # Early decisions (classifier.cascade): only where the views are averaged.
    from classifier.training import cascade

    early = cascade.fit(view_logits, calibration, threshold, op["band"]) if tta == "dihedral8" else {}
    return {"tta": tta, "calibration": calibration, "threshold": float(threshold), "operating_point": op,
            "cascade": early, "validation": validation}
