"""Fit a model version's differential head (classifier.differential) on the embeddings of its reference
library (classifier.reference: the worker's own embeddings of the dataset's images), training images
only, and report it on the validation images:

    python -m classifier.training.differential --model FILE --data DIR [--index NPZ] [--build-index]

The index is ``<model>.reference.npz`` unless given (``--build-index`` builds it first, as the registry's
background job does: every image embedded on the worker's path). The training and validation images are
the model's own split, remade from its recorded recipe, the locked test split left out of both: the
head's regularisation is chosen on validation, and the locked images choose nothing. Writes
``<model>.differential.safetensors`` and prints one JSON object: per-class one-vs-rest AUC, balanced
accuracy (all, HAM10000 parts), the benign-keratosis AUC on the ISIC 2017 part, the melanoma AUC of the
differential beside the binary head's, and retrieval precision@k (the share of the k nearest training
images with the same class), per source.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from classifier import differential, reference
from classifier.modelfile import ModelFileError, read_metadata
from classifier.training import metrics
from classifier.training.data import DatasetError, load_samples, locked_test_split, split_as_recorded

log = logging.getLogger("classifier.training.differential")

C_GRID = (0.003, 0.01, 0.03, 0.1)  # inverse L2 strength per image (sklearn's C), chosen on validation
MIN_PER_CLASS = 2  # training images a class needs at least; rarer classes keep their bias only


def fit_head(x: np.ndarray, y: np.ndarray, c: float, n_classes: int, balanced: bool = False,
             iterations: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weight, bias, mean, scale) of a multinomial logistic regression on standardised ``x``, L2-penalised
    as sklearn's LogisticRegression(C=c) (mean loss + |W|² / (2 c n)), fitted by L-BFGS."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / scale).double()
    yt = torch.from_numpy(y).long()
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = torch.from_numpy(np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)) if balanced \
        else None
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w.T + b, yt, weight=weights) \
            + (w * w).sum() / (2 * c * len(y)) + 1e-4 * (b * b).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy(), mean, scale


def figures(probs: np.ndarray, y: np.ndarray, sources: np.ndarray, malignancy: np.ndarray | None = None) -> dict:
    """Per-class one-vs-rest AUC, balanced accuracy (all; HAM10000 parts), the ISIC 2017 part's
    benign-keratosis and melanoma AUC (beside the binary head's, ``malignancy``)."""
    out = {"n": int(len(y)), "balanced_accuracy": round(metrics.balanced_multiclass_accuracy(y, probs.argmax(1)), 4),
           "auc": {}}
    for i, name in enumerate(reference.CLASSES):
        if 0 < (y == i).sum() < len(y):
            out["auc"][name] = round(metrics.roc_auc(y == i, probs[:, i]), 4)
    ham = np.isin(sources, ["ham224", "ham600"])
    if ham.any():
        out["balanced_accuracy_ham"] = round(metrics.balanced_multiclass_accuracy(y[ham], probs[ham].argmax(1)), 4)
    isic17 = sources == "isic2017"
    bk, mel = reference.CLASSES.index("benign_keratosis"), reference.CLASSES.index("melanoma")
    if 0 < (y[isic17] == bk).sum() < isic17.sum():
        out["benign_keratosis_auc_isic2017"] = round(metrics.roc_auc(y[isic17] == bk, probs[isic17, bk]), 4)
    if 0 < (y[isic17] == mel).sum() < isic17.sum():
        out["melanoma_auc_isic2017"] = round(metrics.roc_auc(y[isic17] == mel, probs[isic17, mel]), 4)
        if malignancy is not None:
            out["melanoma_auc_isic2017_binary_head"] = round(metrics.roc_auc(y[isic17] == mel, malignancy[isic17]), 4)
    return out


def precision_at_k(queries: np.ndarray, qy: np.ndarray, library: np.ndarray, ly: np.ndarray, k: int = 8) -> float:
    """Mean share of each query's k nearest library rows (cosine) with the query's class."""
    lib = reference.normalise(library)
    k = min(k, len(lib))
    hits = []
    for start in range(0, len(queries), 512):
        sims = reference.normalise(queries[start:start + 512]) @ lib.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        hits.append((ly[top] == qy[start:start + 512, None]).mean(1))
    return float(np.concatenate(hits).mean()) if hits else float("nan")


def split_index(index: reference.Index, samples, recipe: dict):
    """Row numbers of the index's training, validation and locked images (the model's recorded split)."""
    root = Path(index.meta.get("dataset", "")).resolve()
    rows = {str(k): i for i, k in enumerate(index.keys)}

    def rows_of(chosen):
        out = [rows.get(str(Path(s.path).resolve().relative_to(root))) for s in chosen]
        return np.array([r for r in out if r is not None], dtype=int)

    train, val = split_as_recorded(samples, recipe)
    locked = {s.path for s in locked_test_split(samples)}
    return (rows_of([s for s in train if s.path not in locked]), rows_of([s for s in val if s.path not in locked]),
            rows_of([s for s in val if s.path in locked]))


def fit(index: reference.Index, samples, metadata, out_path, balanced: bool = True) -> dict:
    """Fit and write the head; returns its report (also in the head file's metadata)."""
    y_all = np.array([reference.CLASSES.index(reference.differential_class(d)) for d in index.diagnoses])
    x_all = np.asarray(index.raw, np.float64)
    train, val, locked = split_index(index, samples, metadata.training.get("recipe", {}))
    if len(train) == 0 or len(val) == 0:
        raise ValueError("the index has no training or no validation images of the model's split")
    n = len(reference.CLASSES)
    best = None
    for c in C_GRID:
        head = fit_head(x_all[train], y_all[train], c, n, balanced)
        probs = differential.Differential(*head, reference.CLASSES, {}).probabilities(x_all[val])
        score = metrics.balanced_multiclass_accuracy(y_all[val], probs.argmax(1))
        log.info("C=%g: validation balanced accuracy %.4f", c, score)
        if best is None or score > best[0]:
            best = (score, c, head, probs)
    _, c, head, probs = best
    report = {"model_version": metadata.version, "C": c, "balanced": balanced,
              "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "n_train": int(len(train)),
              "n_locked_left_out": int(len(locked)), "embedded_with": index.meta.get("runtime", ""),
              **validation_report(probs, y_all[val], index.sources[val], x_all[val], x_all[train], y_all[train])}
    differential.save(out_path, *head, report)
    return report


def validation_report(probs, y, sources, x, library, library_y) -> dict:
    """A head's figures on validation images (``probs`` of embeddings ``x``, classes ``y``), with the
    retrieval precision@8 of ``x`` against the training images' embeddings, all and per source."""
    report = {"validation": figures(probs, y, sources),
              "retrieval_precision_at_8": round(precision_at_k(x, y, library, library_y), 4), "per_source": {}}
    for source in sorted(set(sources.tolist())):
        m = sources == source
        report["per_source"][source] = {
            "n": int(m.sum()),
            "balanced_accuracy": round(metrics.balanced_multiclass_accuracy(y[m], probs[m].argmax(1)), 4),
            "retrieval_precision_at_8": round(precision_at_k(x[m], y[m], library, library_y), 4)}
    return report


def top_label_ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the most likely class (its probability against how often it is right)."""
    conf, right = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).sum()
                     for b in range(bins) if (which == b).any()) / len(y))


def fit_calibration(logits: np.ndarray, y: np.ndarray, iterations: int = 300, offsets: bool = True) -> dict:
    """One temperature (and, with ``offsets``, an offset per class) minimising the log loss of
    softmax(logits / T + offsets) on held-out images (L-BFGS; offsets sum to zero). Offsets move the head's
    class-balanced leaning back towards the classes' shares in those images, which also moves its most
    likely class towards the common ones; a temperature alone keeps every image's ranking of the classes."""
    z = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(y, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    offsets_ = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=offsets)
    opt = torch.optim.LBFGS([log_t, offsets_] if offsets else [log_t], lr=0.5, max_iter=iterations,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp() + offsets_ - offsets_.mean(), t)
        loss.backward()
        return loss

    opt.step(closure)
    o = (offsets_ - offsets_.mean()).detach().numpy()
    return {"temperature": float(log_t.detach().exp()), "offsets": [round(float(v), 6) for v in o]}


def calibrate(probs_logits: np.ndarray, y: np.ndarray, groups, folds: int = 5, offsets: bool = True) -> dict:
    """The calibration fitted on all of ``probs_logits``' images, with the top-class ECE before, after (in
    sample) and cross-fitted (each fold's images under a fit on the other folds, folds by lesion)."""
    import zlib

    fitted = fit_calibration(probs_logits, y, offsets=offsets)
    fold = np.array([zlib.crc32(str(g).encode()) % folds for g in groups])
    crossed = np.empty((len(y), probs_logits.shape[1]))
    for f in range(folds):
        held = fold == f
        crossed[held] = differential.calibrated(probs_logits[held], fit_calibration(probs_logits[~held], y[~held],
                                                                                   offsets=offsets))
    before = differential.calibrated(probs_logits, None)
    after = differential.calibrated(probs_logits, fitted)
    return {**fitted, "method": "temperature and class offsets" if offsets else "temperature", "n": int(len(y)),
            "ece_before": round(top_label_ece(before, y), 4),
            "ece_after": round(top_label_ece(after, y), 4),
            "ece_after_cross_fitted": round(top_label_ece(crossed, y), 4),
            "log_loss_before": round(float(-np.log(before[np.arange(len(y)), y] + 1e-12).mean()), 4),
            "log_loss_after_cross_fitted": round(float(-np.log(crossed[np.arange(len(y)), y] + 1e-12).mean()), 4),
            "balanced_accuracy_before": round(metrics.balanced_multiclass_accuracy(y, before.argmax(1)), 4),
            "balanced_accuracy_after": round(metrics.balanced_multiclass_accuracy(y, after.argmax(1)), 4),
            "largest_shown_after": round(float(after.max()), 4)}


MAX_ECE = 0.05  # a temperature alone is kept where its cross-fitted top-class ECE is within this


def calibrate_head(model_path, data, batch_size: int = 32, cache=None) -> dict:
    """Embed the model's validation images outside the locked split on the worker's path, fit the head's
    calibration on them and rewrite the head file beside ``model_path`` with it (weights unchanged): a
    temperature alone where its cross-fitted ECE is at most MAX_ECE (it keeps the head's class-balanced
    ranking, and so its balanced accuracy), else a temperature with class offsets. ``cache``: an .npz that
    keeps the embeddings for a second run."""
    from safetensors import safe_open

    from classifier.predictor import Predictor

    metadata = read_metadata(model_path)
    head = differential.load(model_path, metadata.weights_version)
    if head is None:
        raise ValueError(f"no differential head beside {model_path}")
    samples = load_samples(data)
    _, val = split_as_recorded(samples, metadata.training.get("recipe", {}))
    locked = {s.path for s in locked_test_split(samples)}
    chosen = [s for s in val if s.path not in locked and reference.differential_class(s.diagnosis)]
    predictor = Predictor.from_file(model_path, device="cpu", runtime="torch")
    if cache and Path(cache).is_file() and list(np.load(cache)["paths"]) == [str(s.path) for s in chosen]:
        embeddings = np.load(cache)["embeddings"]
    else:
        embeddings = np.concatenate([  # the worker's embeddings: features over the views its decision used
            predictor.assess(predictor.preprocess([s.path for s in chosen[i:i + batch_size]])).embeddings.numpy()
            for i in range(0, len(chosen), batch_size)])
        if cache:
            np.savez(cache, embeddings=embeddings, paths=np.array([str(s.path) for s in chosen]))
    y = np.array([reference.CLASSES.index(reference.differential_class(s.diagnosis)) for s in chosen])
    groups = [s.group for s in chosen]
    alone = calibrate(head.logits(embeddings), y, groups, offsets=False)
    with_offsets = calibrate(head.logits(embeddings), y, groups, offsets=True)
    report = alone if alone["ece_after_cross_fitted"] <= MAX_ECE else with_offsets
    report["alternative"] = {k: v for k, v in (with_offsets if report is alone else alone).items()
                             if k not in ("offsets",)}
    report.update(fitted_on=f"{len(chosen)} validation images outside the locked test split, embedded with "
                            f"{predictor.runtime} on the worker's views", date=time.strftime("%Y-%m-%d"))
    path = differential.head_path(model_path)
    with safe_open(str(path), framework="np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: v for k, v in head.meta.items() if k not in ("format", "classes")}
    differential.save(path, tensors["weight"], tensors["bias"], tensors["mean"], tensors["scale"],
                      {**meta, "calibration": report})
    return report


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Fit a model file's differential head on its reference library's "
                                "embeddings.", add_help=add_help)
    p.add_argument("--model", required=True, help="model file (.safetensors); the head is written beside it")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (labels.csv with diagnoses)")
    p.add_argument("--index", help="the reference index (default: beside the model file)")
    p.add_argument("--build-index", action="store_true", help="embed the dataset first (the worker's path; slow)")
    p.add_argument("--unweighted", action="store_true",
                   help="weight every image alike (default: classes by inverse frequency, as balanced accuracy "
                        "counts them; on the starter 0.62 against 0.44-0.52 on validation, docs/experiments.md)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--calibrate", action="store_true",
                   help="only fit the head's calibration (temperature and class offsets) on the validation images "
                        "outside the locked split, and rewrite the head file with it")
    p.add_argument("--cache", help="with --calibrate: keep the validation embeddings in this .npz")
    return p


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.calibrate:
        from classifier.training.cli import run_and_print

        return run_and_print(lambda: calibrate_head(args.model, args.data, cache=args.cache))
    try:
        metadata = read_metadata(args.model)
        samples = load_samples(args.data)
        index_file = Path(args.index) if args.index else reference.index_path(args.model)
        if args.build_index:
            from classifier.predictor import Predictor

            predictor = Predictor.from_file(args.model, device=args.device)
            reference.build(predictor, samples, args.data, index_file,
                            progress=lambda done, total: log.info("embedded %d/%d images", done, total))
        index = reference.load(index_file, metadata.version)
        report = fit(index, samples, metadata, differential.head_path(args.model), not args.unweighted)
    except (ModelFileError, DatasetError, reference.LibraryUnavailable, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
