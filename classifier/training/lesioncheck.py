"""Fit a model file's lesion check (classifier.lesioncheck) on its training images and set its cut-off
on its validation images; weights and version stay as they were:

    python -m classifier.training.lesioncheck --model FILE --data DIR [--train-images 2000]

prints the share of validation images per source that warn and rewrites FILE.
"""

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from classifier.lesioncheck import NAME, LesionCheck

log = logging.getLogger(__name__)

SHRINKAGE = 0.1  # weight of the average variance in the shrunk covariance: 512 dimensions, ~2,000 images
PERCENTILE = 99.5


def fit_statistics(features: torch.Tensor, shrinkage: float = SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) of training features (n, d), the covariance shrunk toward a multiple of I."""
    x = features.double()
    mean = x.mean(0)
    cov = torch.cov((x - mean).T)
    target = torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
    precision = torch.linalg.inv((1 - shrinkage) * cov + shrinkage * target)
    return mean.float(), precision.float()


def features_of(predictor, samples, batch_size: int = 16) -> torch.Tensor:
    """Pooled features of the first view of each sample's image, in order."""
    out = []
    for i in range(0, len(samples), batch_size):
        batch = predictor.preprocess([s.path for s in samples[i:i + batch_size]])
        out.append(predictor.runner.both(batch)[1].float().cpu())
        if (i // batch_size) % 20 == 0:
            log.info("features: %d/%d images", min(i + batch_size, len(samples)), len(samples))
    return torch.cat(out)


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Fit the lesion check of a model file on its training images and set its "
                                "cut-off on its validation images; the file is rewritten with them.",
                                add_help=add_help)
    p.add_argument("--model", required=True, help="model file (.safetensors), rewritten in place")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (its split is remade)")
    p.add_argument("--train-images", type=int, default=2000, help="training images to fit the statistics on")
    p.add_argument("--percentile", type=float, default=PERCENTILE,
                   help="the cut-off: this percentile of the validation images' distances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    return p


def fit_model_file(model_path, data_dir, train_images: int = 2000, percentile: float = PERCENTILE,
                   seed: int = 0, device: str = "cpu") -> dict:
    """Fit the check of a model file on ``data_dir`` (its split remade from the file's recipe, or
    fixed by the labels' split column), rewrite the file with it and return the metadata it got.
    Raises ModelFileError, DatasetError or OSError."""
    from classifier.model import load_classifier
    from classifier.modelfile import save_model_file
    from classifier.predictor import Predictor
    from classifier.training.data import load_samples, split_as_recorded

    model, meta = load_classifier(model_path)
    recipe = meta.training.get("recipe", {})
    train, val = split_as_recorded(load_samples(data_dir), recipe)
    rng = np.random.default_rng(seed)
    train = [train[i] for i in sorted(rng.permutation(len(train))[:train_images])]
    predictor = Predictor(model.to(device), meta, torch.device(device))
    mean, precision = fit_statistics(features_of(predictor, train))
    dist = LesionCheck(mean, precision, 0.0).distances(features_of(predictor, val)).numpy()
    cutoff = float(np.percentile(dist, percentile))
    per_source = {}
    for src in sorted({s.source for s in val}):
        d = np.array([x for x, s in zip(dist, val) if s.source == src])
        warned = int((d > cutoff).sum())
        per_source[src] = {"n": int(len(d)), "warned": warned, "rate": round(warned / len(d), 4)}
    info = {
        "cutoff": round(cutoff, 3),
        "percentile": percentile,
        "shrinkage": SHRINKAGE,
        "features": "pooled last-layer features of the image as given (first view)",
        "fitted_on": f"{len(train)} training images of {Path(data_dir).name}",
        "validation_images": int(len(dist)),
        "validation_warning_rate": round(float((dist > cutoff).mean()), 4),
        "validation_distance_median": round(float(np.median(dist)), 3),
        "by_source": per_source,
    }
    tmp = Path(model_path).with_suffix(".tmp.safetensors")
    # fp16 precision matrix: 0.5 MB instead of 1 (distances change by about 2e-5 of themselves).
    save_model_file(tmp, model, dataclasses.replace(meta, lesion_check=info),
                    extra={f"{NAME}.mean": mean, f"{NAME}.precision": precision.half()})
    tmp.replace(model_path)
    return info


def main(args) -> int:
    from classifier.training.cli import run_and_print

    return run_and_print(lambda: fit_model_file(args.model, args.data, args.train_images, args.percentile, args.seed,
                                                args.device))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
