"""Fast CPU inference: an ONNX export of a model file and a statically quantised int8 copy.

``build_artefacts`` writes, next to ``<name>.safetensors``:

- ``<name>.onnx``: the fp32 graph (batch dimension dynamic);
- ``<name>.int8.onnx``: QDQ int8, weights per channel, activations calibrated on training images;
- ``<name>.fast.json``: the report: for each runtime its measured speed on this machine and its
  agreement with the PyTorch fp32 model on the validation images (decision flips at the model's
  threshold, AUC change, largest probability difference), and whether it passed the guard. The
  decisions compared are the worker's: a model that averages its logit over the 8 orientations is
  run in all 8 on every check image (``run_batched``). Besides the two graphs alone it checks a
  third runtime, ``onnx-int8-recheck``: int8, with every image whose averaged logit lies within a
  margin of the threshold rerun in fp32 (the margin from int8's error on the calibration images).

``Predictor.from_file`` reads the report and uses the fastest runtime that passed; with no
report (or no ONNX Runtime installed) it runs the PyTorch model, so a missing artefact only ever
costs speed, never correctness.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from classifier import artefacts
from classifier.artefacts import REPORT_FORMAT, artefact_paths
from classifier.predictor import Predictor, threshold_logit
from classifier.presets import dihedral
from classifier.runtime import (
    CUDA_DTYPES,
    FastPathError,
    OnnxRunner,
    Recheck,
    TorchRunner,
    averaged,
    averaged_logits,
    default_threads,
)
from classifier.training import metrics

log = logging.getLogger(__name__)

# The int8 artefact is accepted only within these bounds against fp32.
MAX_FLIP_RATE = 0.005
MAX_AUC_DELTA = 0.005


def export_onnx(model: torch.nn.Module, input_size: int, path) -> Path:
    """Export the classifier's logits and pooled features (two outputs, ``logit`` and ``features``)
    with a dynamic batch dimension; written to a temporary name, then renamed."""
    from classifier.model import WithFeatures

    path = Path(path)
    tmp = path.with_suffix(".tmp.onnx")
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # their INFO lines would bury the report
        logging.getLogger(name).setLevel(logging.WARNING)
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        WithFeatures(model).eval().cpu(),
        (example,),
        str(tmp),
        input_names=["image"],
        output_names=["logit", "features"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    tmp.replace(path)
    return path


# int8 activation ranges are calibrated on at least this many inputs where the model lets it (below).
MIN_CALIBRATION_INPUTS = 512


def calibration_inputs(images: torch.Tensor, views: int) -> torch.Tensor:
    """The calibration images in their first k orientations, k = min(views, ceil(512 / n)): a model
    that averages the 8 orientations runs every image in all of them, and a small calibration set
    (the 128 shipped with the code) then still covers the activation ranges. The starter on the
    shipped check set: 3 of 256 decisions flipped calibrated upright only, 1 in all 8 orientations
    (1,024 inputs). The four quarter turns (512 inputs) do as well at half the calibration time:
    int8 - fp32 logit differences over the check images upright and mirrored, median / 99th
    percentile / largest, 0.083 / 0.47 / 0.82 on 1,024 inputs (190 s), 0.075 / 0.48 / 0.62 on 512
    (91 s), 0.087 / 0.47 / 0.55 on 256 (50 s): min/max ranges gain nothing from more of the same
    images' orientations."""
    k = min(views, -(-MIN_CALIBRATION_INPUTS // max(len(images), 1)))
    return torch.cat([dihedral(images, i) for i in range(k)]) if k > 1 else images


def quantize_int8(fp32_path, int8_path, calibration: torch.Tensor, batch_size: int = 16, fp32_convs: int = 1) -> Path:
    """Static int8 quantisation (QDQ; weights per channel, activations by min/max on ``calibration``).

    The first ``fp32_convs`` convolutions (they see raw pixels, where rounding costs most) and the
    linear head stay in fp32, the usual practice: on the ISIC validation split keeping the first one
    took decision flips from 0.6% to 0.15% and the largest probability difference from 0.020 to
    0.004, for under 2% of the compute.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_path = Path(int8_path)
    prepared = int8_path.with_suffix(".prep.onnx")
    tmp = int8_path.with_suffix(".tmp.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.split(batch_size))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"image": b.contiguous().numpy()}

    try:
        # Folds BatchNorm into the convolutions and fixes shapes, so every conv gets quantised.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        nodes = onnx.load(str(prepared), load_external_data=False).graph.node
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        head = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
        # What comes before the first convolution (colour constancy, classifier.model.ShadesOfGray)
        # is preprocessing, cheap and shared by every pixel: it stays fp32.
        first = next(i for i, n in enumerate(nodes) if n.op_type == "Conv")
        head += [n.name for n in nodes[:first]]
        quantize_static(
            str(prepared),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=convs[:fp32_convs] + head,
        )
        tmp.replace(int8_path)
    finally:
        for p in (prepared, tmp):
            p.unlink(missing_ok=True)
    return int8_path


def batched_logits(runner, images: torch.Tensor, batch_size: int, views: int = 1, recheck=None,
                   cascade=None) -> torch.Tensor:
    """The worker's logits for ``images``: the runner's averaged over the model's ``views``
    orientations (or as few as its ``cascade`` needs), and, given a ``runtime.Recheck``, its
    borderline images rerun by the exact runner."""
    return decide(runner, images, batch_size, views, recheck, cascade).logits


@dataclasses.dataclass
class Decided:
    logits: torch.Tensor  # the worker's (view-averaged, uncalibrated) logit per image
    views: torch.Tensor  # forward passes of the runner per image (a rerun by the recheck not counted)
    seconds: float  # wall time of the runner's calls
    embeddings: torch.Tensor | None = None  # pooled features averaged over the same views (None: none given)

    @property
    def passes_per_s(self) -> float:
        return float(self.views.sum()) / max(self.seconds, 1e-9)


def decide(runner, images: torch.Tensor, batch_size: int, views: int = 1, recheck=None, cascade=None) -> Decided:
    """``batched_logits`` with how many views each image took and how long the runner took: the guard's
    own run times each runtime, on the views it actually runs."""
    logits, used, features, seconds = [], [], [], 0.0
    for b in images.split(batch_size):
        start = time.perf_counter()
        if cascade is not None:
            z, v, f = cascade.run_with_features(runner, b)
        elif hasattr(runner, "both"):
            (z, f), v = averaged(runner, b, views), torch.full((len(b),), views, dtype=torch.long)
        else:
            z, v, f = averaged_logits(runner, b, views), torch.full((len(b),), views, dtype=torch.long), None
        seconds += time.perf_counter() - start
        if recheck is not None:
            z, _, _, f = recheck.rerun(b, z, f)
        logits.append(z)
        used.append(v)
        features.append(f)
    embeddings = None if any(f is None for f in features) else torch.cat(features)
    return Decided(torch.cat(logits), torch.cat(used), seconds, embeddings)


RETRIEVAL_K = 8


def retrieval_agreement(reference: torch.Tensor | None, candidate: torch.Tensor | None, k: int = RETRIEVAL_K) -> dict:
    """How a runtime's embeddings retrieve against fp32's on the check images (issue 32): for each image,
    the share of its k nearest other check images (cosine) that fp32's embeddings find too, and the lowest
    cosine between an image's two embeddings. Recorded in the report beside the decision agreement."""
    if reference is None or candidate is None or len(reference) < 3:
        return {}
    k = min(k, len(reference) - 1)
    from classifier.reference import normalise

    a, b = normalise(reference.numpy()), normalise(candidate.numpy())

    def neighbours(x):
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]

    overlap = [len(set(p) & set(q)) / k for p, q in zip(neighbours(a).tolist(), neighbours(b).tolist())]
    return {"retrieval_overlap_at_k": round(float(np.mean(overlap)), 4),
            "retrieval_overlap_min": round(float(np.min(overlap)), 4),
            "embedding_cosine_min": round(float((a * b).sum(1).min()), 5), "retrieval_k": k}


def run_batched(runner, images: torch.Tensor, batch_size: int, calibrate=torch.sigmoid, views: int = 1,
                recheck=None) -> np.ndarray:
    """Probabilities for ``images`` as the worker computes them (``batched_logits``), through the model's
    calibration, so the guard counts flips of the decisions the worker makes, at the threshold where
    the model file puts it. (A single view's decision says less: the 9-epoch block 4-5 model's int8
    copy flipped 9 of 1,143 upright decisions and 3 of its 8-view averaged ones.)"""
    return calibrate(batched_logits(runner, images, batch_size, views, recheck)).numpy()


def agreement(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """How far ``candidate`` probabilities are from the fp32 ``reference`` on the same images."""
    flips = int(np.sum((reference >= threshold) != (candidate >= threshold)))
    out = {
        "n": int(len(reference)),
        "decision_flips": flips,
        "decision_flip_rate": flips / max(len(reference), 1),
        "max_probability_difference": float(np.max(np.abs(reference - candidate))) if len(reference) else 0.0,
    }
    if len(set(labels.tolist())) == 2:
        auc_ref, auc = metrics.roc_auc(labels, reference), metrics.roc_auc(labels, candidate)
        out.update(auc_fp32=auc_ref, auc=auc, auc_delta=auc - auc_ref)
    else:
        out.update(auc_fp32=None, auc=None, auc_delta=0.0)
    out["passed"] = out["decision_flip_rate"] <= MAX_FLIP_RATE and abs(out["auc_delta"]) <= MAX_AUC_DELTA
    return out


# The recheck band is this many times the largest int8 error seen on (up to) this many calibration images.
RECHECK_SAFETY = 2.0
RECHECK_MARGIN_IMAGES = 256


def recheck_margin(fast, exact, calibration: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """``RECHECK_SAFETY`` times the largest logit difference between the int8 and fp32 graphs over (up to
    256 of) the calibration images, upright (all 8 orientations would cost 8 times as long). Images
    other than the check images choose the band, so the guard still tests it. The starter
    vgg16-20261127-417e4f35 on the shipped check set: 0.35 over the 128 calibration images upright,
    0.36 for the 8-view averages of the 256 check images (0.40 for the calibration images' averages),
    hence the factor of 2."""
    images = calibration[:RECHECK_MARGIN_IMAGES]
    largest = max(float((fast(b) - exact(b)).abs().max()) for b in images.split(batch_size))
    return RECHECK_SAFETY * largest, len(images)


def measure_speed(runner, images: torch.Tensor, batch_size: int, repeats: int = 3) -> float:
    """Images per second over ``images`` in batches (best of ``repeats``, after one warm-up batch)."""
    runner(images[:batch_size])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in images.split(batch_size):
            runner(b)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


# int8 is built and guarded only where a probe shows it this much faster than ONNX fp32 on the building
# CPU. On CPUs without int8 dot-product instructions (AVX2 only: AMD EPYC here) static QDQ int8 ran
# VGG16 at 4.5 images/s against ONNX fp32's 5.7 (issue 43); with AVX-512 VNNI about 3x faster.
INT8_MIN_GAIN = 1.15
PROBE_INPUTS = 16
INT8_CHOICES = ("auto", "always", "never")


def int8_probe(paths, fp32_runner, inputs: "BuildInputs", batch_size: int, threads) -> dict:
    """Is int8 worth its minutes of calibration and guard on this CPU? A throwaway int8 graph calibrated on
    a few inputs runs as fast as the real one (the same operators; calibration moves only its scales):
    both graphs are timed on the same images, best of three."""
    probe_path = paths["onnx-int8"].with_suffix(".probe.onnx")
    images = inputs.validation[:max(batch_size, 4)]
    try:
        quantize_int8(paths["onnx-fp32"], probe_path, inputs.calibration[:PROBE_INPUTS], batch_size)
        int8 = measure_speed(OnnxRunner(probe_path, threads), images, min(batch_size, len(images)))
    finally:
        probe_path.unlink(missing_ok=True)
    fp32 = measure_speed(fp32_runner, images, min(batch_size, len(images)))
    gain = int8 / fp32
    worth = gain >= INT8_MIN_GAIN
    log.info("int8 probe: %.1f passes/s against ONNX fp32's %.1f (%.2fx): %s", int8, fp32, gain,
             "building int8" if worth else "int8 not built on this CPU")
    return {"int8_passes_per_s": round(int8, 2), "onnx_fp32_passes_per_s": round(fp32, 2), "gain": round(gain, 3),
            "min_gain": INT8_MIN_GAIN, "worth_it": worth, "cpu": artefacts.cpu_signature()["name"]}


@dataclasses.dataclass
class BuildInputs:
    calibration: torch.Tensor  # preprocessed training images, N x 3 x S x S
    validation: torch.Tensor  # preprocessed validation images
    validation_labels: np.ndarray  # 0/1
    description: str  # where the images came from, for the report


def build_artefacts(model_path, inputs: BuildInputs, batch_size: int = 16, threads: int | None = None,
                    onnx: bool = True, views: int | None = None, int8: str = "auto") -> dict:
    """Export, quantise, check against fp32 and time each runtime; write and return the report.

    ``views`` (default: the model's own) is how many orientations each check image is decided on. Only
    a rehearsal of the build (the test suite's, on a few images) passes fewer than the model's: its
    report records them, and ``artefacts.read_report`` refuses a report whose views are not the model's,
    so a worker never runs a runtime guarded on other decisions than its own. Each runtime is timed on
    its own guard run (after one warm-up pass), not on passes of its own: the build's time goes to the
    checks. ``int8``: "auto" builds the int8 graph only where a probe finds it at least INT8_MIN_GAIN times
    faster than ONNX fp32 on this CPU; "always" or "never"."""
    if int8 not in INT8_CHOICES:
        raise ValueError(f"int8 must be one of {', '.join(INT8_CHOICES)}, not {int8!r}")
    model_path = Path(model_path)
    paths = artefact_paths(model_path)
    predictor = Predictor.from_file(model_path, device="cpu", runtime="torch")
    meta = predictor.metadata
    views = meta.views if views is None else views
    # The check images are decided as the worker decides them: with the model's cascade where it has
    # one (a rehearsal on fewer views than the model's runs none), each runtime on its own views.
    cascade = predictor.cascade if views == meta.views else None
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    steps: dict[str, float] = {}  # seconds each step of the build took, for the report

    def step(name: str, since: float) -> float:
        now = time.perf_counter()
        steps[name] = round(steps.get(name, 0.0) + now - since, 1)
        return now

    reference_runner = predictor.runner
    calibrate = predictor.calibrate
    reference_runner(inputs.validation[:1])  # warm-up: the first pass of a runtime allocates what it needs
    decided = decide(reference_runner, inputs.validation, batch_size, views, cascade=cascade)
    mark = step("torch-fp32 reference", started)
    reference = calibrate(decided.logits).numpy()
    labels = inputs.validation_labels

    def timing(decided: Decided) -> dict:
        """Forward passes per second from the guard's own run; images per second as the worker runs them
        (the mean views per image of the check images)."""
        per_image = float(decided.views.float().mean())
        return {"img_s": decided.passes_per_s / per_image, "passes_per_s": decided.passes_per_s,
                "mean_views": per_image}

    runtimes = {
        "torch-fp32": {
            "file": model_path.name,
            **timing(decided),
            **agreement(reference, reference, labels, meta.threshold),
        }
    }

    logits, runners, embeddings = {}, {}, {}

    def check(name, runner=None, widen: float = 0.0, **extra):
        runner = runners[name] = runner or OnnxRunner(paths[name], threads)
        runner(inputs.validation[:1])
        mine = decide(runner, inputs.validation, batch_size, views,
                      cascade=cascade.widened(widen) if cascade is not None else None)
        logits[name], embeddings[name] = mine.logits, mine.embeddings
        probs = calibrate(logits[name]).numpy()
        runtimes[name] = {
            "file": paths[name].name,
            **timing(mine),
            **agreement(reference, probs, labels, meta.threshold),
            **retrieval_agreement(decided.embeddings, mine.embeddings),
            **extra,
        }
        return runtimes[name]["passed"]

    def check_recheck(margin: float, n_margin: int) -> bool:
        """The int8 graph with its borderline images rerun in fp32 (runtime.Recheck): where int8 alone
        misses the guard, this may pass it, at a share of fp32's cost. A rerun image gets the fp32
        graph's result on the model's cascade, which check("onnx-fp32") already computed for every
        check image: taken from there, not computed again."""
        recheck = Recheck(runners["onnx-fp32"], threshold_logit(meta), margin, views, cascade=cascade)
        near = recheck.near(logits["onnx-int8"])
        exact = embeddings["onnx-fp32"][near] if embeddings["onnx-fp32"] is not None else None
        rechecked, features = recheck.replace(logits["onnx-int8"], embeddings["onnx-int8"], near,
                                              logits["onnx-fp32"][near], exact)
        share = recheck.rechecked / max(recheck.images, 1)
        runtimes["onnx-int8-recheck"] = {
            "file": f"{paths['onnx-int8'].name} + {paths['onnx-fp32'].name}",
            # int8's passes, and for the rerun share fp32's passes (its views per image) more.
            "img_s": 1 / (1 / runtimes["onnx-int8"]["img_s"] + share / runtimes["onnx-fp32"]["img_s"]),
            "mean_views": runtimes["onnx-int8"]["mean_views"],
            **agreement(reference, calibrate(rechecked).numpy(), labels, meta.threshold),
            **retrieval_agreement(decided.embeddings, features),
            "recheck_margin": margin,
            "margin_from": f"{RECHECK_SAFETY:g} x the largest int8 - fp32 logit difference over {n_margin} "
                           "calibration images, upright",
            "rechecked": recheck.rechecked,
            "rechecked_share": share,
        }
        return runtimes["onnx-int8-recheck"]["passed"]

    attempts = []
    probe = None
    if onnx:
        export_onnx(predictor.runner.model, meta.input_size, paths["onnx-fp32"])
        check("onnx-fp32")
        mark = step("onnx-fp32 export and check", mark)
        if int8 == "auto":
            probe = int8_probe(paths, runners["onnx-fp32"], inputs, batch_size, threads)
            mark = step("int8 speed probe", mark)
        else:
            probe = {"worth_it": int8 == "always", "asked": int8}
    # int8, keeping the first convolution in fp32; if neither int8 alone nor with the recheck passes the
    # guard, the first two (each quantisation is minutes of calibration: not done when not needed). Not at
    # all where int8 is no faster than ONNX fp32 on this CPU (the probe): its guard would buy nothing.
    calibration = calibration_inputs(inputs.calibration, views)
    for fp32_convs in (1, 2) if onnx and probe["worth_it"] else ():
        quantize_int8(paths["onnx-fp32"], paths["onnx-int8"], calibration, batch_size, fp32_convs)
        mark = step("int8 quantisation", mark)
        # int8's largest error, measured first: the cascade keeps this much farther from every edge on
        # int8 logits (as Predictor.from_file does), and the recheck reruns what lies this close.
        int8 = OnnxRunner(paths["onnx-int8"], threads)
        margin, n_margin = recheck_margin(int8, runners["onnx-fp32"], inputs.calibration, batch_size)
        passed = check("onnx-int8", runner=int8, widen=margin, fp32_convolutions=fp32_convs,
                       earlier_attempts=list(attempts))
        passed = check_recheck(margin, n_margin) or passed
        mark = step("int8 margin and check", mark)
        attempts.append({k: runtimes["onnx-int8"][k] for k in ("fp32_convolutions", "decision_flips", "auc_delta",
                                                                "max_probability_difference", "img_s")})
        if passed:
            break
    accepted = [n for n, r in runtimes.items() if r["passed"]]
    chosen = max(accepted, key=lambda n: runtimes[n]["img_s"])
    chosen_cuda = check_cuda(predictor.runner.model, inputs, reference, labels, meta.threshold, runtimes,
                             calibrate=calibrate, views=views, cascade=cascade)
    step("cuda", mark)
    report = {
        "format": REPORT_FORMAT,
        "model_version": meta.version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "batch_size": batch_size,
        "threads": threads or default_threads(),
        "calibration_images": int(len(inputs.calibration)),
        "calibration_inputs": int(len(calibration)),
        "validation_images": int(len(inputs.validation)),
        "views": views,  # orientations per check image at most: the decisions compared are the worker's
        # Each runtime decided the check images on the views its cascade ran (artefacts.read_report refuses
        # a report guarded under another cascade than the model file's).
        "cascade": artefacts.cascade_key(meta) if cascade is not None else None,
        "images_from": inputs.description,
        "guard": {"max_decision_flip_rate": MAX_FLIP_RATE, "max_auc_delta": MAX_AUC_DELTA},
        "runtimes": runtimes,
        "chosen": chosen,
        "chosen_cuda": chosen_cuda,
        "int8_probe": probe,
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_by_step": steps,
    }
    tmp = paths["report"].with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(paths["report"])
    log.info("fast path for %s: %s (%s)", meta.version, chosen,
             ", ".join(f"{n} {r['img_s']:.1f} img/s{'' if r['passed'] else ' rejected'}" for n, r in runtimes.items()))
    return report


def check_cuda(model, inputs, reference, labels, threshold, runtimes, batch_size: int = 64,
               device: torch.device | None = None, calibrate=torch.sigmoid, views: int = 1,
               cascade=None) -> str | None:
    """On a machine with CUDA: run fp16 and bf16 autocast against the CPU fp32 reference on the
    validation images, with the same guard, and time each; returns the fastest that passed
    (``torch-cuda-fp32`` when neither did), or None without CUDA (a GPU worker then runs fp32).
    A model with a cascade decides early on each precision's own logits, so its margins are widened
    by that precision's error as int8's are: ``cascade_margin``, ``RECHECK_SAFETY`` times its largest
    logit difference from CPU fp32 over the calibration images (Predictor widens the worker's cascade
    by it; a report without it means no early decisions there)."""
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda")
    import copy

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    speed_images = inputs.validation[: batch_size * 4].repeat(4, 1, 1, 1)
    # The cascade was fitted on CPU fp32 logits; CUDA's fp32 (TF32 convolutions) is measured against them too.
    exact = TorchRunner(copy.deepcopy(model), torch.device("cpu")) if cascade is not None else None
    for name, dtype in CUDA_DTYPES.items():
        runner = TorchRunner(copy.deepcopy(model), device, dtype)
        extra = {}
        if cascade is None:
            probs = run_batched(runner, inputs.validation, batch_size, calibrate, views)
        else:
            margin, n_margin = recheck_margin(runner, exact, inputs.calibration, batch_size)
            mine = decide(runner, inputs.validation, batch_size, views, cascade=cascade.widened(margin))
            probs = calibrate(mine.logits).numpy()
            extra = {"cascade_margin": margin, "mean_views": float(mine.views.float().mean()),
                     "margin_from": f"{RECHECK_SAFETY:g} x the largest {name} - fp32 logit difference over "
                                    f"{n_margin} calibration images, upright, {where} against the CPU"}
        runtimes[name] = {
            "file": f"{name} on {where}",
            "img_s": measure_speed(runner, speed_images, batch_size),
            "batch_size": batch_size,
            **agreement(reference, probs, labels, threshold),
            **extra,
        }
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    accepted = [n for n in CUDA_DTYPES if runtimes[n]["passed"]]
    return max(accepted, key=lambda n: runtimes[n]["img_s"]) if accepted else "torch-cuda-fp32"


def inputs_from_dataset(model_path, data_dir, n_calibration: int = 1024, seed: int = 0) -> BuildInputs:
    """Calibration images from the model's training split, validation images from its validation split.

    The split is remade with the seed and fraction recorded in the model file; when the data's
    validation fingerprint differs from the recorded one (other data), the split of ``data_dir`` is
    used as it is and the report says so.
    """
    from classifier.modelfile import read_metadata
    from classifier.presets import ClassificationPresetEval
    from classifier.training.data import fingerprint, load_samples, split_as_recorded

    meta = read_metadata(model_path)
    recipe = meta.training.get("recipe", {})
    samples = load_samples(data_dir)
    train, val = split_as_recorded(samples, recipe)
    same = fingerprint(val).get("labels_sha256") == meta.training.get("validation", {}).get("labels_sha256")
    rng = np.random.default_rng(seed)
    calibration = [train[i] for i in rng.permutation(len(train))[:n_calibration]]
    transform = ClassificationPresetEval(meta.input_size, meta.mean, meta.std)

    def load(items):
        from PIL import Image

        out = []
        for s in items:
            with Image.open(s.path) as img:
                img.draft("RGB", (meta.input_size * 2, meta.input_size * 2))
                out.append(transform(img.convert("RGB")))
        return torch.stack(out)

    fixed = all(s.split for s in samples)
    where = (f"{data_dir} (the model's validation split)" if same else
             f"{data_dir} (the split its labels.csv fixes: {len(train)} calibration, {len(val)} check images)" if fixed
             else f"{data_dir} (not the model's validation split)")
    return BuildInputs(load(calibration), load(val), np.array([s.label for s in val]), where)


def get_args_parser(add_help=True):
    import argparse

    p = argparse.ArgumentParser(description="Build the ONNX fp32 and int8 artefacts of a model file and "
                                "check them against PyTorch fp32.", add_help=add_help)
    p.add_argument("--model", required=True, help="model file (.safetensors)")
    p.add_argument(
        "--data", required=True, help="dataset folder the model was trained on (labels.csv or benign/ malignant/)"
    )
    p.add_argument("--calibration-images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX artefacts: check and time only PyTorch "
                   "(and CUDA fp16/bf16 where a GPU is present)")
    p.add_argument("--int8", choices=INT8_CHOICES, default="auto",
                   help="build and guard the int8 graph: where a probe finds it faster than ONNX fp32 on this CPU "
                   "(auto), always or never")
    return p


def main(args) -> int:
    from classifier.training.cli import run_and_print

    def work():
        inputs = inputs_from_dataset(args.model, args.data, args.calibration_images)
        return build_artefacts(args.model, inputs, args.batch_size, args.threads or None, onnx=not args.no_onnx,
                               int8=args.int8)

    return run_and_print(work, errors=(FastPathError,))


if __name__ == "__main__":
    import sys

    sys.exit(main(get_args_parser().parse_args()))
