"""Inference benchmark: the worker's path against the same runtime running every view, and against the
2019 tool's way, on the same images.

    python -m classifier.training.bench [--model PATH] [--images N] [--data DIR] [--json]

Product: what a worker does — the fastest runtime that passed the accuracy guard
(classifier.training.fastpath; PyTorch fp32 when no artefact was built), in batches, with the model's
cascade (classifier.cascade) deciding early where it safely can.
All views: the same runtime and batches with every image run in all the model's views (the path
before the cascade): its decisions and borderline-band assignments are what the product's are
compared with.
Seed: the 2019 tool's way — PyTorch eager fp32, one view, one image per call.
Each is timed from image file to probability (decode and preprocessing included) and, separately,
for the model alone. The two worker paths run in fresh processes, so that their peak resident memory
is a worker's, not this process's.
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
from queue import Empty

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
    """The 2019 tool: PyTorch eager fp32, the image as uploaded only, one image per call."""
    import torch

    from classifier.predictor import Predictor

    predictor = Predictor.from_file(model, device=device, runtime="torch", early=False)
    total, model_only = [], []
    with torch.no_grad():
        predictor.runner(predictor.preprocess(paths[:1]))  # warm-up
        for p in paths:
            t0 = time.perf_counter()
            x = predictor.preprocess([p])
            t1 = time.perf_counter()
            predictor.runner(x)
            if device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            total.append(t2 - t0)
            model_only.append(t2 - t1)
    return {"seconds": sum(total), "model_seconds": sum(model_only),
            "median_ms": statistics.median(total) * 1000, "runtime": "torch-fp32, 1 view", "version": predictor.version}


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


def decode_rates(predictor, paths, repeats=3) -> dict:
    """Images per second decoded and transformed (no model) on one thread and on as many as there are
    cores, the same images in the same run (best of ``repeats``); and how many the worker uses
    (classifier.predictor.default_decoders: one per core on a CUDA worker, one on the CPU)."""
    worker = predictor.decoders
    rates = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        predictor.decoders = threads
        predictor.preprocess(paths[:threads])  # the pool's threads start
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            predictor.preprocess(paths)
            best = min(best, time.perf_counter() - t)
        rates[threads] = len(paths) / best
    predictor.decoders = worker
    return {"worker_decoders": worker, "img_s_by_threads": rates}


def run_product(model, paths, batch_size, runtime, device, queue, early=True):
    """In a fresh process: load as the worker does, classify in batches, report peak memory."""
    from classifier.predictor import Predictor

    predictor = Predictor.from_file(model, device=device, runtime=runtime, early=early)
    predictor.probabilities(paths[:batch_size])  # warm-up, as a worker's first batch
    if predictor.recheck:
        predictor.recheck.images = predictor.recheck.rechecked = 0
    probs, views, model_seconds = [], [], 0.0
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        x = predictor.preprocess(paths[i:i + batch_size])
        t = time.perf_counter()
        p, _, v, _ = predictor.assess(x)
        probs.extend(p)
        views.extend(v)
        model_seconds += time.perf_counter() - t
    seconds = time.perf_counter() - start
    full_size_ms = full_size_preprocess_ms(predictor, paths[0]) if early else None
    decode = decode_rates(predictor, paths) if early else None
    band = (predictor.metadata.operating_point or {}).get("band") or [predictor.threshold, predictor.threshold]
    queue.put(
        {
            "full_size_preprocess_ms": full_size_ms,
            "decode": decode,
            "probs": probs,
            "views": views,
            "band": band,
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


def in_fresh_process(*args):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=run_product, args=(*args[:5], queue, *args[5:]))
    child.start()
    while True:  # a child that died (an exception, the OOM killer) must not leave this waiting forever
        try:
            out = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive():
                raise SystemExit(f"error: the worker process failed (exit code {child.exitcode}); its "
                                 "traceback is above") from None
    child.join()
    return out


def side_of_band(p, threshold, band):
    """0 below the band, 1 in it under the threshold, 2 in it at or over the threshold, 3 above it."""
    p = np.asarray(p)
    return (p >= band[0]).astype(int) + (p >= threshold) + (p >= band[1])


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

    worker = (args.model, paths, args.batch_size, args.runtime, args.device)
    every = in_fresh_process(*worker, False)  # the same runtime, every view of every image
    product = in_fresh_process(*worker, True)
    baseline = run_baseline(args.model, paths, args.device)

    n = len(paths)
    threshold, band = product["threshold"], product["band"]
    ref, got = np.array(every["probs"]), np.array(product["probs"])
    flips = int(np.sum((ref >= threshold) != (got >= threshold)))
    band_changes = int(np.sum(side_of_band(ref, threshold, band) != side_of_band(got, threshold, band)))
    views = np.array(product["views"])
    result = {
        "model_version": meta.version,
        "input_size": meta.input_size,
        "images": n,
        "cpu_count": os.cpu_count(),
        "runtime": product["runtime"],
        "batch_size": args.batch_size,
        "product_img_s": n / product["seconds"],
        "product_ms_per_image": product["seconds"] * 1000 / n,
        "product_model_img_s": n / product["model_seconds"],
        "mean_views": float(views.mean()),
        "all_views_share": float(np.mean(views == meta.views)),
        "all_views_img_s": n / every["seconds"],
        "all_views_ms_per_image": every["seconds"] * 1000 / n,
        "all_views_model_img_s": n / every["model_seconds"],
        "speedup_over_all_views": every["seconds"] / product["seconds"],
        "decision_flips": flips,
        "decision_flip_rate": flips / n,
        "band_changes": band_changes,
        "band_change_rate": band_changes / n,
        "max_probability_difference": float(np.max(np.abs(ref - got))),
        "baseline_runtime": baseline["runtime"],
        "baseline_img_s": n / baseline["seconds"],
        "baseline_ms_per_image": baseline["seconds"] * 1000 / n,
        "baseline_model_img_s": n / baseline["model_seconds"],
        "speedup": baseline["seconds"] / product["seconds"],
        "rss_mb": product["rss_mb"],
        "all_views_rss_mb": every["rss_mb"],
        "rechecked_share": product["rechecked_share"],
        "full_size_preprocess_ms": product["full_size_preprocess_ms"],
        "decode_img_s_by_threads": product["decode"]["img_s_by_threads"],
        "worker_decoders": product["decode"]["worker_decoders"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'':58}{'images/s':>10}{'ms/image':>10}{'model only img/s':>18}")
    rows = [(f"worker ({result['runtime']}, batch {args.batch_size}, early decisions)", "product"),
            (f"worker ({result['runtime']}, batch {args.batch_size}, all {meta.views} views)", "all_views"),
            (f"seed ({result['baseline_runtime']}, batch 1)", "baseline")]
    for label, key in rows:
        print(f"{label:58}{result[key + '_img_s']:10.1f}{result[key + '_ms_per_image']:10.1f}"
              f"{result[key + '_model_img_s']:18.1f}")
    print(f"early decisions: {result['speedup_over_all_views']:.2f}x the all-views path; {result['mean_views']:.2f} "
          f"views per image, {result['all_views_share']:.1%} of images needed all {meta.views}; against all views: "
          f"decisions changed {flips}/{n}, band assignments changed {band_changes}/{n}, max probability "
          f"difference {result['max_probability_difference']:.4f}")
    print(f"against the seed: {result['speedup']:.2f}x; worker peak RSS {result['rss_mb']:.0f} MB "
          f"(all views: {result['all_views_rss_mb']:.0f} MB)")
    if result["rechecked_share"] is not None:
        print(f"rerun in fp32 (within the recheck margin of the threshold): {result['rechecked_share']:.1%} of images")
    print(f"decode + preprocess of a 4032 x 3024 JPEG: {result['full_size_preprocess_ms']:.1f} ms")
    print("decode + preprocess of the images, no model: " + ", ".join(
        f"{r:.0f} images/s on {t} thread{'s' if t > 1 else ''}" for t, r in result["decode_img_s_by_threads"].items())
        + f" (the worker decodes on {result['worker_decoders']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
