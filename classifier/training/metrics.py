"""Binary classification metrics, in numpy, for probabilities of the positive class (malignant).

Written out rather than imported so the classifier package needs nothing beyond numpy; the tests
check each against scikit-learn and hand-computed cases.
"""

import math

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=float)
    # Start index of each run of equal values, then the mean rank of the run.
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(y_true, y_prob) -> float:
    """Area under the ROC curve (Mann-Whitney U); ties count one half."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(p)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true, y_prob):
    """(fpr, tpr, thresholds), thresholds descending, starting at +inf like scikit-learn's."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, dtype=float)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, ps[last_of_run]]


def bootstrap_auc_ci(y_true, y_prob, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap interval for the AUC, resampling cases with replacement."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, dtype=float)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        aucs.append(roc_auc(y[idx], p[idx]))
    if not aucs:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(aucs, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return [float(lo), float(hi)]


def threshold_for_sensitivity(y_true, y_prob, target: float) -> float:
    """A threshold at which sensitivity (p >= threshold counts as positive) reaches ``target`` with the
    fewest positive calls: halfway between the lowest positive score it needs and the next lower score
    of any case. Placed on that positive's own score, the figures would hang on rounding: the same
    network rerun another way (batch size, runtime) moves a score by 1e-8 and that case changes side."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, dtype=float)
    pos = np.sort(p[y])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive cases: cannot choose a threshold for a sensitivity")
    k = min(len(pos), max(1, math.ceil(target * len(pos) - 1e-9)))
    needed = pos[k - 1]
    below = p[p < needed]
    return float((needed + below.max()) / 2) if len(below) else float(needed)


def _binomial_tail(k: int, n: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(n, q), summed in log space (n up to tens of thousands)."""
    if k <= 0:
        return 1.0
    if q <= 0:
        return 0.0
    if q >= 1:
        return 1.0
    lq, l1q = math.log(q), math.log1p(-q)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lq + (n - i) * l1q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in terms))


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson exact interval for a proportion k/n: each end holds with (1 - level)/2 error, so
    the lower end is a one-sided bound at (1 + level)/2 confidence. (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2

    def solve(f):  # f increasing in q: the q in [0, 1] where f(q) = alpha, by bisection
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < alpha else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(lambda q: _binomial_tail(k, n, q))
    upper = 1.0 if k == n else 1 - solve(lambda q: _binomial_tail(n - k, n, q))
    return lower, upper


def positives_for_lower_bound(n: int, target: float, level: float = 0.95) -> int:
    """The fewest of ``n`` positive cases found at which the lower end of the ``level`` Clopper-Pearson
    interval of sensitivity reaches ``target``; n + 1 when even all n do not (too few cases)."""
    for k in range(max(0, math.floor(target * n)), n + 1):
        if binomial_interval(k, n, level)[0] >= target:
            return k
    return n + 1


def threshold_for_sensitivity_bound(y_true, y_prob, target: float, level: float = 0.95) -> float:
    """``threshold_for_sensitivity`` for the sensitivity whose ``level`` interval's lower end is ``target``
    (Clopper-Pearson): on these cases the threshold finds enough positives that, for new cases like
    them, sensitivity is at least ``target`` with (1 + level)/2 confidence. With too few positives for
    that, the threshold finds all of them. The fitting cases must be held out from training."""
    y = np.asarray(y_true).astype(bool)
    n = int(y.sum())
    if n == 0:
        raise ValueError("no positive cases: cannot choose a threshold for a sensitivity")
    k = min(n, positives_for_lower_bound(n, target, level))
    return threshold_for_sensitivity(y, y_prob, k / n)


def balanced_multiclass_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of the share of each class predicted as itself (the
    ISIC 2018/2019 challenges' balanced multi-class accuracy)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes])) if len(classes) else float("nan")


def confusion(y_true, y_prob, threshold: float) -> dict:
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(y_prob, dtype=float) >= threshold
    return {
        "tp": int((pred & y).sum()),
        "fp": int((pred & ~y).sum()),
        "tn": int((~pred & ~y).sum()),
        "fn": int((~pred & y).sum()),
    }


def _ratio(a, b):
    return float(a / b) if b else float("nan")


def binary_metrics(y_true, y_prob, threshold: float, n_boot=1000, seed=0) -> dict:
    """Everything `python -m classifier.training.evaluate` reports, as plain JSON-able data."""
    y = np.asarray(y_true).astype(bool)
    c = confusion(y, y_prob, threshold)
    sensitivity = _ratio(c["tp"], c["tp"] + c["fn"])
    specificity = _ratio(c["tn"], c["tn"] + c["fp"])
    t95 = threshold_for_sensitivity(y, y_prob, 0.95) if y.any() else float("nan")
    c95 = confusion(y, y_prob, t95) if y.any() else None
    return {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "auc": roc_auc(y, y_prob),
        "auc_ci95": bootstrap_auc_ci(y, y_prob, n_boot=n_boot, seed=seed),
        "threshold": float(threshold),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": _ratio(c["tp"], c["tp"] + c["fp"]),
        "accuracy": _ratio(c["tp"] + c["tn"], len(y)),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "specificity_at_95_sensitivity": _ratio(c95["tn"], c95["tn"] + c95["fp"]) if c95 else float("nan"),
        "confusion": c,
    }
