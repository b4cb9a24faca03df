"""Evaluate a model on a labelled dataset; print ONE JSON object on stdout (logs go to stderr).

    python -m classifier.training.evaluate --data DIR [--model PATH] [--split all|validation|locked-test]
        [--roc PNG] [--scores CSV]

DIR is labels.csv layout or benign/ and malignant/ folders. Without --model, the starter model
that `make run` publishes (classifier/models/starter.safetensors) is used. ``--split validation``
keeps only the model's own validation images (the split remade from its recorded recipe).
``--split locked-test`` scores the development set's locked test split (classifier.training.data
.locked_test_split) once per model file: the result goes into a ledger (``--ledger``, by default
classifier/models/locked-test.jsonl, keyed by the file's sha256) with what the operating point does
there (``validation.held_out_statement``), and a file already in it is not scored again: its
recorded entry is printed. A model that trained on any locked image is refused; one whose recipe did
not leave the split out of its choices (``--locked-test``) is scored with ``"clean": false``.

Besides the overall figures, the JSON has AUC (95% CI) per source and per diagnosis, the headline
(melanoma vs nevus + seborrheic keratosis on the ISIC 2017 part), ``dihedral_flip_rate`` (the
share of images whose decision changes across the 8 rotations/mirror images, as the worker would
decide them), the calibration error and Brier score, and for a model with a cascade (classifier.cascade)
what its early decisions did against the full 8-view average (``cascade``: decisions and band
assignments changed, mean views per image, share needing all views). Every image is run in all 8 orientations
(``--no-flips``: only as the model needs, 1 or 8). ``--scores`` also writes each image's probability
and decision, for comparing models image by image or combining them without running them again.
"""

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from classifier.artefacts import LOCKED_TEST_LEDGER, read_ledger
from classifier.modelfile import DEFAULT_MODEL_PATH, ModelFileError, file_sha256
from classifier.predictor import Predictor
from classifier.presets import dihedral
from classifier.training import metrics, validation
from classifier.training.data import DatasetError, load_samples, locked_test_split, split_as_recorded

log = logging.getLogger("classifier.training.evaluate")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Evaluate a skinweb model on a labelled dataset.", add_help=add_help)
    p.add_argument("--data", required=True, help="dataset folder (labels.csv, or benign/ and malignant/)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_PATH), help="model file (default: the starter model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threshold", type=float, default=None, help="override the model's stored threshold")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC interval")
    p.add_argument("--roc", metavar="PNG", help="also draw the ROC curve with the operating point")
    p.add_argument("--split", choices=["all", "validation", "locked-test"], default="all",
                   help="all images, only the model's validation split (remade from its recipe), or the "
                        "locked test split (once per model file, into the ledger)")
    p.add_argument("--ledger", default=str(LOCKED_TEST_LEDGER), help="the locked test split's ledger (JSON lines)")
    p.add_argument("--no-flips", action="store_true", help="skip the 8-orientation check (dihedral_flip_rate)")
    p.add_argument("--scores", metavar="CSV", help="also write one row per image: its probability and decision")
    return p


def predict_all(predictor, samples, batch_size, flips=True):
    """(probabilities as the worker computes them, the network's logits for each orientation or None, each
    image's embedding over the views the worker averages or None where the runtime gives no features).

    On onnx-int8-recheck, as the worker: borderline int8 results rerun in fp32. A model without
    test-time averaging decides each orientation on that orientation's logit alone, so each is
    rechecked as an upload of it would be; with averaging every orientation has the same mean, the
    recheck's decision included, so the per-orientation logits stay int8's."""
    probs, views, embeddings = [], [], []
    recheck, averaged = predictor.recheck, predictor.metadata.views > 1
    for start in range(0, len(samples), batch_size):
        batch = predictor.preprocess([s.path for s in samples[start:start + batch_size]])
        if flips:
            both = [predictor.runner.both(dihedral(batch, k)) for k in range(8)]
            logits = torch.stack([z for z, _ in both], 1)
            if all(f is not None for _, f in both):  # the embedding: features over the views the worker uses
                features = torch.stack([f for _, f in both], 1).numpy()
                if predictor.cascade is not None:
                    used = predictor.cascade.decide_from_views(logits.numpy())[1]
                    order = list(predictor.cascade.order)
                    embeddings.append(np.stack([features[i, order[:v]].mean(0) for i, v in enumerate(used)]))
                else:
                    embeddings.append(features[:, :predictor.metadata.views].mean(1))
            if recheck is not None and not averaged:
                logits = torch.stack([recheck(dihedral(batch, k), logits[:, k]) for k in range(logits.shape[1])], 1)
            views.append(logits.numpy())
            z = logits.mean(1) if averaged else logits[:, 0]
            if predictor.cascade is not None:  # as the worker: early decisions where they are safe
                z = torch.from_numpy(predictor.cascade.decide_from_views(logits.numpy())[0]).float()
            if recheck is not None and averaged:
                z = recheck(batch, z)
            probs.extend(predictor.calibrate(z).tolist())
        else:
            assessment = predictor.assess(batch)
            probs.extend(assessment.probabilities)
            if assessment.embeddings is not None:
                embeddings.append(assessment.embeddings.numpy())
        log.info("%d/%d images", min(start + batch_size, len(samples)), len(samples))
    complete = sum(len(e) for e in embeddings) == len(samples)
    return (np.array(probs), np.concatenate(views) if views else None,
            np.concatenate(embeddings) if complete else None)


def differential_report(predictor, model_path, samples, embeddings: np.ndarray, malignancy: np.ndarray) -> dict:
    """Issue 32 on a labelled set with diagnoses: the differential head's per-class one-vs-rest AUC and
    balanced accuracy, and retrieval precision@8 against the training images of the model's reference
    library (classifier.training.differential), per source. {} without diagnoses or embeddings."""
    from classifier import reference
    from classifier.training.differential import figures, precision_at_k, split_index

    known = [i for i, s in enumerate(samples) if reference.differential_class(s.diagnosis)]
    if embeddings is None or not known:
        return {}
    y = np.array([reference.CLASSES.index(reference.differential_class(samples[i].diagnosis)) for i in known])
    sources = np.array([samples[i].source for i in known])
    x = embeddings[known]
    out = {}
    if predictor.differential is not None:
        out["differential"] = figures(predictor.differential.probabilities(x), y, sources, malignancy[known])
    try:
        index = reference.load(reference.index_path(model_path), predictor.version)
    except reference.LibraryUnavailable as exc:
        out["retrieval"] = {"unavailable": str(exc)}
        return out
    train, _, _ = split_index(index, load_samples(index.meta["dataset"]), predictor.metadata.training.get("recipe", {}))
    library = np.asarray(index.raw, np.float32)[train]
    labels = np.array([reference.CLASSES.index(reference.differential_class(d)) for d in index.diagnoses[train]])
    out["retrieval"] = {"precision_at_8": round(precision_at_k(x, y, library, labels), 4), "library": int(len(train)),
                        "per_source": {src: round(precision_at_k(x[sources == src], y[sources == src], library, labels),
                                                  4) for src in sorted(set(sources.tolist()))}}
    return out


def score(y, p, samples, threshold, view_logits, meta, cascade=None, n_boot=1000) -> dict:
    """The figures of probabilities ``p`` at ``threshold``: overall, per source and diagnosis, the headline,
    calibration; with the 8 views' logits, the decisions' stability under rotation and what the ``cascade``
    (classifier.cascade.Cascade) changed against all 8 views."""
    result = metrics.binary_metrics(y, p, threshold, n_boot=n_boot)
    result.update(validation.group_report(y, p, samples, threshold, n_boot=n_boot))
    result["calibration"] = {"ece": round(validation.expected_calibration_error(y, p), 4),
                             "brier": round(validation.brier(y, p), 4), "bins": 10}
    if view_logits is not None:
        result["dihedral_flip_rate"] = round(validation.flip_rate(validation.decisions_per_orientation(
            view_logits, meta.tta, meta.calibration, threshold)), 4)
        if cascade is not None:
            from classifier.training.cascade import agreement

            result["cascade"] = agreement(cascade, view_logits)
    return result


def locked_statement(y, p, samples, meta, threshold) -> dict:
    """What a ledger entry says beyond the figures: the operating point on these images, and whether the
    model's choices were made without them (``clean``; ``operating_point_clean``: at least its threshold,
    band and cascade were, classifier.training.operatingpoint)."""
    recipe = meta.training.get("recipe", {})
    op = meta.operating_point or {"threshold": threshold}
    fitted = meta.training.get("operating_point_file", {}).get("fitted_on", {})
    return {"operating_point": validation.held_out_statement(y, p, samples, {**op, "threshold": threshold}),
            "clean": bool(recipe.get("locked_test")),
            "operating_point_clean": bool(recipe.get("locked_test") or fitted.get("locked_test_left_out")),
            "scored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_scores(path, root, samples, p, threshold):
    """One row per image, in the dataset's order: the image as labels.csv names it, its part, diagnosis and
    label, the probability as the worker computes it (every digit, so that ranks and ties survive) and the
    decision at ``threshold``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "source", "diagnosis", "label", "probability", "malignant"])
        for s, prob in zip(samples, p):
            w.writerow([s.path.relative_to(root).as_posix(), s.source, s.diagnosis, s.label, repr(float(prob)),
                        int(prob >= threshold)])


def draw_roc(path, y, p, threshold, auc):
    fpr, tpr, _ = metrics.roc_curve(y, p)
    c = metrics.confusion(y, p, threshold)
    op = (c["fp"] / max(c["fp"] + c["tn"], 1), c["tp"] / max(c["tp"] + c["fn"], 1))
    size, m = 480, 50
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)

    def xy(x, y_):
        return m + x * (size - 2 * m), size - m - y_ * (size - 2 * m)

    d.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    d.line([xy(0, 0), xy(1, 1)], fill=(180, 180, 180))
    d.line([xy(x, y_) for x, y_ in zip(fpr, tpr)], fill=(30, 90, 200), width=2)
    ox, oy = xy(*op)
    d.ellipse([ox - 5, oy - 5, ox + 5, oy + 5], outline=(200, 30, 30), width=2)
    d.text((m, 15), f"ROC, AUC {auc:.3f}; operating point at threshold {threshold:.3f}", fill="black")
    d.text((size // 2 - 60, size - 30), "1 - specificity", fill="black")
    d.text((5, m - 20), "sensitivity", fill="black")
    img.save(path)


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        samples = load_samples(args.data)
        predictor = Predictor.from_file(args.model, device=args.device)
    except (DatasetError, ModelFileError, OSError) as exc:
        log.error("%s", exc)
        return 2
    if not samples:
        log.error("no images in %s", args.data)
        return 2
    recipe = predictor.metadata.training.get("recipe", {})
    locked = None
    if args.split == "validation":
        _, samples = split_as_recorded(samples, recipe)
    elif args.split == "locked-test":
        if args.threshold is not None:
            log.error("--threshold: the locked test split scores a model file's own operating point")
            return 2
        locked = {"sha256": file_sha256(args.model), "version": predictor.version}
        if locked["sha256"] in (ledger := read_ledger(args.ledger)):
            log.info("%s was scored on the locked test split already: its entry in %s, not a second score",
                     predictor.version, args.ledger)
            print(json.dumps({**ledger[locked["sha256"]], "already_scored": True}))
            return 0
        train, _ = split_as_recorded(samples, recipe)
        samples = locked_test_split(samples)
        if not samples:
            log.error("%s has no locked test split (a labels.csv with a fixed split column)", args.data)
            return 2
        seen = {s.path for s in train} & {s.path for s in samples}
        if seen:
            log.error("%s trained on %d images of the locked test split: it cannot be tested on it",
                      predictor.version, len(seen))
            return 2
    t = time.perf_counter()
    y = np.array([s.label for s in samples])
    p, view_logits, embeddings = predict_all(predictor, samples, args.batch_size, flips=not args.no_flips)
    threshold = predictor.threshold if args.threshold is None else args.threshold
    result = score(y, p, samples, threshold, view_logits, predictor.metadata, predictor.cascade, args.bootstrap)
    result.update(differential_report(predictor, args.model, samples, embeddings, p))
    result.update(model_version=predictor.version, tta=predictor.metadata.tta, runtime=predictor.runtime,
                  split=args.split)
    if locked is not None:
        result.update(locked_statement(y, p, samples, predictor.metadata, threshold), **locked)
    result["seconds"] = round(time.perf_counter() - t, 1)
    if args.roc:
        draw_roc(args.roc, y, p, threshold, result["auc"])
    if args.scores:
        write_scores(args.scores, Path(args.data), samples, p, threshold)
    if locked is not None:
        with open(args.ledger, "a") as f:
            f.write(json.dumps(result, sort_keys=True) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
