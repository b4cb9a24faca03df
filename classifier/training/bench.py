"""Inference benchmark: the seed-style baseline against the worker's path, on the same images.

    python -m classifier.training.bench [--model PATH] [--images N] [--data DIR] [--json]

Baseline: the 2019 tool's way — PyTorch eager fp32, eval mode, no_grad, one image per call.
Product: what a worker does — the fastest runtime that passed the accuracy guard
(classifier.training.fastpath; PyTorch fp32 when no artefact was built), in batches.
Both are timed from image file to probability (decode and preprocessing included) and, separately,
for the model alone. The product runs in a fresh process so that its peak resident memory is the
worker's, not this process's.
"""

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from classifier.modelfile import DEFAULT_MODEL_PATH


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=add_help)
    p.add_argument("--model", default=os.environ.get("SKINWEB_MODEL", str(DEFAULT_MODEL_PATH)))
    p.add_argument("--images", type=int, default=64, help="how many images (repeated when the folder has fewer)")
    p.add_argument("--data", default=(os.environ.get("TRAINING_DATASETS", "").split(":") or [""])[0] or None,
                   help="folder of images (labels.csv or benign/ malignant/); default: the first of TRAINING_DATASETS")
    p.add_argument("--batch-size", type=int, default=int(os.environ.get("INFERENCE_BATCH_SIZE", 4)),
                   help="the product's batch size (default: the worker's, INFERENCE_BATCH_SIZE or 4)")
    p.add_argument("--runtime", default="auto", help="the product's runtime (default: as the worker chooses)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def image_paths(data, n):
    from classifier.training.data import load_samples

    if not data:
        raise SystemExit("error: give --data DIR (or set TRAINING_DATASETS): the images to time the model on")
    root = Path(data)
    paths = sorted(s.path for s in load_samples(root))
    rng = np.random.default_rng(0)
    paths = [paths[i] for i in rng.permutation(len(paths))]
    return [paths[i % len(paths)] for i in range(n)], root


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_baseline(model, paths, device):
    import torch

    from classifier.predictor import Predictor

    predictor = Predictor.from_file(model, device=device, runtime="torch")
    predictor.probabilities(paths[:1])  # warm-up
    probs, total, model_only = [], [], []
    with torch.no_grad():
        for p in paths:
            t0 = time.perf_counter()
            x = predictor.preprocess([p])
            t1 = time.perf_counter()
            probs.extend(predictor.run(x))
            if device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            total.append(t2 - t0)
            model_only.append(t2 - t1)
    return {"probs": probs, "seconds": sum(total), "model_seconds": sum(model_only),
            "median_ms": statistics.median(total) * 1000, "runtime": "torch-fp32", "version": predictor.version}


def full_size_preprocess_ms(predictor, path, repeats=10) -> float:
    """Decode + preprocess of a camera-sized dermoscopy JPEG (4032 x 3024), median of ``repeats``."""
    import io

    from PIL import Image

    with Image.open(path) as img:
        big = img.convert("RGB").resize((4032, 3024))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    times = []
    for _ in range(repeats):
        buf.seek(0)
        t = time.perf_counter()
        predictor.preprocess([buf])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def run_product(model, paths, batch_size, runtime, device, queue):
    """In a fresh process: load as the worker does, classify in batches, report peak memory."""
    from classifier.predictor import Predictor

    predictor = Predictor.from_file(model, device=device, runtime=runtime)
    predictor.probabilities(paths[:batch_size])  # warm-up, as a worker's first batch
    if predictor.recheck:
        predictor.recheck.images = predictor.recheck.rechecked = 0
    probs, model_seconds = [], 0.0
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        x = predictor.preprocess(paths[i:i + batch_size])
        t = time.perf_counter()
        probs.extend(predictor.run(x))
        model_seconds += time.perf_counter() - t
    seconds = time.perf_counter() - start
    full_size_ms = full_size_preprocess_ms(predictor, paths[0])
    queue.put(
        {
            "full_size_preprocess_ms": full_size_ms,
            "probs": probs,
            "seconds": seconds,
            "model_seconds": model_seconds,
            "rss_mb": peak_rss_mb(),
            "runtime": predictor.runtime if predictor.runtime != "torch" else f"torch-{device}",
            "threshold": predictor.threshold,
            # onnx-int8-recheck: the share of images whose borderline int8 result was rerun in fp32
            "rechecked_share": (predictor.recheck.rechecked / max(predictor.recheck.images, 1)
                                if predictor.recheck else None),
        }
    )


def main(args) -> int:
    from classifier.modelfile import ModelFileError, read_metadata

    try:
        meta = read_metadata(args.model)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths, root = image_paths(args.data, args.images)
    print(f"{len(paths)} images from {root}; model {meta.version} ({meta.arch}, {meta.input_size} px)",
          file=sys.stderr)

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=run_product, args=(args.model, paths, args.batch_size, args.runtime, args.device, queue))
    child.start()
    product = queue.get()
    child.join()
    baseline = run_baseline(args.model, paths, args.device)

    n = len(paths)
    ref, got = np.array(baseline["probs"]), np.array(product["probs"])
    flips = int(np.sum((ref >= meta.threshold) != (got >= meta.threshold)))
    result = {
        "model_version": meta.version,
        "input_size": meta.input_size,
        "images": n,
        "cpu_count": os.cpu_count(),
        "baseline_runtime": baseline["runtime"],
        "baseline_img_s": n / baseline["seconds"],
        "baseline_ms_per_image": baseline["seconds"] * 1000 / n,
        "baseline_model_img_s": n / baseline["model_seconds"],
        "runtime": product["runtime"],
        "batch_size": args.batch_size,
        "product_img_s": n / product["seconds"],
        "product_ms_per_image": product["seconds"] * 1000 / n,
        "product_model_img_s": n / product["model_seconds"],
        "speedup": baseline["seconds"] / product["seconds"],
        "model_speedup": baseline["model_seconds"] / product["model_seconds"],
        "decision_flips": flips,
        "decision_flip_rate": flips / n,
        "max_probability_difference": float(np.max(np.abs(ref - got))),
        "rss_mb": product["rss_mb"],
        "rechecked_share": product["rechecked_share"],
        "full_size_preprocess_ms": product["full_size_preprocess_ms"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'':26}{'images/s':>10}{'ms/image':>10}{'model only img/s':>18}")
    print(f"{'baseline (' + result['baseline_runtime'] + ', batch 1)':26}{result['baseline_img_s']:10.1f}"
          f"{result['baseline_ms_per_image']:10.1f}{result['baseline_model_img_s']:18.1f}")
    label = f"product ({result['runtime']}, batch {args.batch_size})"
    print(f"{label:26}{result['product_img_s']:10.1f}{result['product_ms_per_image']:10.1f}"
          f"{result['product_model_img_s']:18.1f}")
    print(f"speedup {result['speedup']:.1f}x (model only {result['model_speedup']:.1f}x); decision flips "
          f"{flips}/{n} ({result['decision_flip_rate']:.2%}); max probability difference "
          f"{result['max_probability_difference']:.4f}; product peak RSS {result['rss_mb']:.0f} MB")
    if result["rechecked_share"] is not None:
        print(f"rerun in fp32 (within the recheck margin of the threshold): {result['rechecked_share']:.1%} of images")
    print(f"decode + preprocess of a 4032 x 3024 JPEG: {result['full_size_preprocess_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
