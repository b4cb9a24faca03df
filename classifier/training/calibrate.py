"""Refit a model file's operating point on its validation split, from the images as they are on disk.

    python -m classifier.training.calibrate --model FILE --data DIR [--target-sensitivity 0.90]
    python -m classifier.training.calibrate --model FILE --data DIR --cascade-only [--check DIR]

Test-time averaging, Platt calibration, threshold, borderline band and the stored validation figures
are chosen again exactly as at the end of training (classifier.training.validation.choose_and_report, on the
network's logits for the 8 rotations/mirror images of every validation image). For a network trained
on other copies of the images than the ones it will see (a GPU host's WebP transport copy,
docker/gpu-pack-dataset.py), or after a change of the validation data's encoding. The weights, the
version and the lesion check are unchanged; the file is rewritten in place. The split is remade
from the file's recipe and must be the one it records (same labels fingerprint), else nothing changes.

``--cascade-only`` fits only the early-decision cascade (classifier.training.cascade) and keeps
everything else, the operating point included: for a published version, whose decisions it does not
change. ``--check DIR`` also reports what the cascade does on another labelled set's check images
(the shipped check set), never used to fit it.
"""

import argparse
import dataclasses
import datetime
import sys


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Refit a model file's test-time averaging, calibration, threshold "
                                "and band on its validation split; the file is rewritten in place.", add_help=add_help)
    p.add_argument("--model", required=True, help="model file (.safetensors), rewritten in place")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (its split is remade)")
    p.add_argument("--target-sensitivity", type=float, default=None,
                   help="default: the one the model was trained for (else 0.90)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC intervals")
    p.add_argument("--cascade-only", action="store_true",
                   help="fit only the early-decision cascade; the operating point and all else kept")
    p.add_argument("--check", help="with --cascade-only: a labelled folder to report the cascade on as well")
    return p


def validation_view_logits(model_path, data_dir, batch_size=32, device="cpu"):
    """(model, metadata, validation samples, their (n, 8) logits); the split must be the one recorded."""
    import torch

    from classifier.model import load_classifier
    from classifier.training.data import DatasetError, fingerprint, load_samples, split_as_recorded

    model, meta = load_classifier(model_path)
    _, val = split_as_recorded(load_samples(data_dir), meta.training.get("recipe", {}))
    recorded = meta.training.get("validation", {}).get("labels_sha256")
    if recorded and fingerprint(val)["labels_sha256"] != recorded:
        raise DatasetError(f"{data_dir} does not give the validation split {meta.version} records")
    return model, meta, val, all_view_logits(model, val, meta, batch_size, torch.device(device))


def all_view_logits(model, samples, meta, batch_size, device):
    from classifier.presets import ClassificationPresetEval
    from classifier.training.train import CachedImages, make_loader, view_logits

    size = meta.input_size
    loader = make_loader(CachedImages(samples, size, ClassificationPresetEval(size, mean=meta.mean, std=meta.std)),
                         batch_size, shuffle=False)
    return view_logits(model.to(device), loader, device)


def recalibrate(model_path, data_dir, target_sensitivity=None, batch_size=32, device="cpu", n_boot=1000) -> dict:
    """Refit and rewrite ``model_path``; return the new operating point. Raises ModelFileError,
    DatasetError or OSError."""
    from classifier.modelfile import replace_metadata
    from classifier.training import validation

    _, meta, val, logits = validation_view_logits(model_path, data_dir, batch_size, device)
    target = target_sensitivity or meta.training.get("target_sensitivity") or 0.90
    y = [s.label for s in val]
    report = validation.choose_and_report(y, logits, val, target, n_boot=n_boot)
    fitted = {"data": str(data_dir), "images": len(val), "target_sensitivity": target,
              "date": datetime.date.today().isoformat()}
    new = replace_metadata(
        model_path, tta=report["tta"], calibration=report["calibration"], threshold=report["threshold"],
        operating_point=report["operating_point"], cascade=report["cascade"],
        metrics={**meta.metrics, "validation": report["validation"]},
        training={**meta.training, "operating_point_fitted_on": fitted},
    )  # the tensors, weights and lesion check alike, are copied as they are
    return {"version": new.version, "tta": new.tta, "calibration": new.calibration, "threshold": new.threshold,
            "operating_point": new.operating_point, "cascade": new.cascade, "previous_threshold": meta.threshold,
            "fitted_on": fitted}


def fit_cascade(model_path, data_dir, check_dir=None, batch_size=32, device="cpu") -> dict:
    """Fit and store only the cascade of ``model_path``; return it (with the check set's figures)."""
    import torch

    from classifier.cascade import Cascade
    from classifier.modelfile import read_metadata, replace_metadata
    from classifier.training import cascade
    from classifier.training.data import DatasetError, load_samples

    if read_metadata(model_path).views <= 1:
        raise DatasetError(f"{model_path} decides on one view: it has no views to save")
    model, meta, val, logits = validation_view_logits(model_path, data_dir, batch_size, device)
    band = (meta.operating_point or {}).get("band")
    record = cascade.fit(logits, meta.calibration, meta.threshold, band)
    record["fitted_on"] = {"data": str(data_dir), "images": len(val), "date": datetime.date.today().isoformat()}
    if check_dir:
        samples = [s for s in load_samples(check_dir) if s.split != "train"]
        fitted = Cascade.from_metadata(dataclasses.replace(meta, cascade=record))
        record["check"] = {"data": str(check_dir), **cascade.agreement(
            fitted, all_view_logits(model, samples, meta, batch_size, torch.device(device)))}
    replace_metadata(model_path, cascade=record)
    return {"version": meta.version, "cascade": record}


def main(args) -> int:
    from classifier.training.cli import run_and_print

    if args.cascade_only:
        return run_and_print(lambda: fit_cascade(args.model, args.data, args.check, args.batch_size, args.device))
    return run_and_print(lambda: recalibrate(args.model, args.data, args.target_sensitivity, args.batch_size,
                                             args.device, args.bootstrap))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
