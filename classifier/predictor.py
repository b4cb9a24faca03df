"""Load a model file once and classify images with it."""

import dataclasses
import logging
import math
import os
import time
import typing
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from classifier import artefacts, differential, lesioncheck, lesiongate
from classifier import runtime as runtimes
from classifier.cascade import Cascade, probability_to_logit
from classifier.model import load_classifier
from classifier.modelfile import ModelMetadata, read_metadata
from classifier.presets import DIHEDRAL_VIEWS, ClassificationPresetEval

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Prediction:
    probability: float  # of malignancy
    decision: str  # "benign" or "malignant", at ``threshold``
    threshold: float
    model_version: str
    ms: float  # wall time per image, preprocessing included
    # classifier.lesioncheck: the image's distance from the training images and the model's cut-off
    # (None for a model file without the check, or an ONNX artefact built before it).
    lesion_distance: float | None = None
    lesion_cutoff: float | None = None
    # Orientations averaged for this image: all of the model's views, or fewer where its cascade
    # (classifier.cascade) decided early.
    views: int = 1

    @property
    def looks_like_lesion(self) -> bool | None:
        return None if self.lesion_distance is None else self.lesion_distance <= self.lesion_cutoff

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Assessment(typing.NamedTuple):
    """What the model says of each image of a batch."""

    probabilities: list[float]  # of malignancy, calibrated
    distances: list[float] | None  # the lesion check's (None: the model file has no check)
    views: list[int]  # orientations averaged
    # Pooled trunk features (n, 512) averaged over the same orientations as the logit: the image's
    # embedding for similar-case retrieval and the differential (None: the runtime gives no features).
    embeddings: torch.Tensor | None


def threshold_logit(metadata: ModelMetadata) -> float:
    """The (view-averaged, uncalibrated) logit at which the calibrated probability meets the threshold."""
    return probability_to_logit(float(metadata.threshold), metadata.calibration)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def default_decoders(device: torch.device) -> int:
    """Threads that decode and transform a batch's images (``SKINWEB_DECODERS``; 0 or unset: automatic).
    On a CUDA worker one per CPU core, so that the network bounds it, not one core decoding; on the CPU
    one, since its cores run the network. Pillow's decoders and resampling and torch's resize release
    the GIL, so threads run in parallel: on the 2 cores here 470 dataset images/s with one thread, 807
    with two; 38 camera-sized JPEGs (4032 x 3024) a second with one, 75 with two."""
    n = int(os.environ.get("SKINWEB_DECODERS", "0") or 0)
    return n if n > 0 else (os.cpu_count() or 1) if device.type == "cuda" else 1


RUNTIMES = ("auto", "torch", "onnx-fp32", "onnx-int8", "onnx-int8-recheck", "torch-cuda-fp16", "torch-cuda-bf16",
            "torch-cuda-fp32")
TIMING_ROUNDS = 3  # passes per runtime when a worker times the accepted runtimes on its CPU (the fastest counts)


class Predictor:
    """Preprocessing plus a runner (classifier.runtime: PyTorch, or an ONNX artefact built by
    classifier.training.fastpath)."""

    def __init__(self, model: torch.nn.Module | None, metadata: ModelMetadata, device: torch.device,
                 runner=None, runtime: str = "torch"):
        self.metadata = metadata
        self.device = device
        self.runtime = runtime
        self.runner = runner if runner is not None else runtimes.TorchRunner(model, device)
        self.transform = ClassificationPresetEval(metadata.input_size, metadata.mean, metadata.std)
        self.lesion_check = None  # set by from_file when the model file has one
        self.differential = None  # classifier.differential, set by from_file when the head is beside the file
        self.recheck = None  # runtimes.Recheck for "onnx-int8-recheck": borderline images rerun in fp32
        # Early decisions where the model file has them (from_file widens the margins by an int8
        # graph's error); None: every image runs all the model's views.
        self.cascade = Cascade.from_metadata(metadata)
        self.decoders = default_decoders(device)
        if device.type == "cuda" and self.decoders > 1:
            # The decode threads are the CPU's parallelism on a GPU worker: each one's resize on torch's
            # own thread pool as well would oversubscribe the cores (on the 2 here, 891 images/s with
            # torch on one thread against 799 on two).
            torch.set_num_threads(1)
        self._decode_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool), made on first use

    @classmethod
    def from_file(cls, path, device: str = "auto", runtime: str = "auto", early: bool = True) -> "Predictor":
        """Load a model file. ``runtime="auto"`` picks what the fast-path report (classifier.training.fastpath)
        accepted: on the CPU the fastest artefact that passed the accuracy guard, on CUDA the fastest
        of fp16/bf16 autocast that passed it; without a report, PyTorch fp32 on either.
        ``early=False`` runs every view for every image even where the model has a cascade (the
        benchmark's baseline)."""
        predictor = cls._from_file(path, device, runtime)
        if not early:
            predictor.cascade = None
            if predictor.recheck is not None:
                predictor.recheck.cascade = None
        return predictor

    @classmethod
    def _from_file(cls, path, device: str, runtime: str) -> "Predictor":
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        dev = resolve_device(device)
        if runtime == "auto":
            report = artefacts.read_report(path)
            if dev.type == "cuda":
                runtime = (report or {}).get("chosen_cuda") or "torch-cuda-fp32"
            else:
                runtime = cls.fastest_here(path, report) if report else "torch"
        if runtime.startswith("torch-cuda"):
            dev = resolve_device("cuda")
        elif runtime.startswith("torch"):
            runtime = "torch"
        if runtime.startswith("onnx"):
            metadata = read_metadata(path)
            paths = artefacts.artefact_paths(path)
            try:
                runner = runtimes.OnnxRunner(paths[runtime.removesuffix("-recheck")])
                recheck = cls.load_recheck(path, metadata) if runtime.endswith("-recheck") else None
            except runtimes.FastPathError as exc:
                log.warning("%s; using PyTorch fp32", exc)
            else:
                predictor = cls(None, metadata, torch.device("cpu"), runner=runner, runtime=runtime)
                predictor.recheck = recheck
                if predictor.cascade is not None and runtime.startswith("onnx-int8"):
                    if recheck is not None:
                        recheck.cascade = predictor.cascade  # the exact one: a rerun is fp32's own result
                    predictor.cascade = predictor.cascade.widened(cls.int8_error_margin(path))
                return predictor.with_check(path)
            runtime = "torch"
        model, metadata = load_classifier(path)
        if dev.type == "cuda" and runtime == "torch":
            runtime = "torch-cuda-fp32"
        runner = runtimes.TorchRunner(model, dev, runtimes.CUDA_DTYPES.get(runtime))
        predictor = cls(model, metadata, dev, runner=runner, runtime=runtime)
        if predictor.cascade is not None and runtime in runtimes.CUDA_DTYPES:
            predictor.cascade = predictor.cascade.widened(cls.measured_error_margin(path, runtime))
        return predictor.with_check(path)

    @staticmethod
    def fastest_here(path, report: dict, batch_size: int = 4) -> str:
        """The fastest CPU runtime on this machine among those the fast-path build's guard accepted.

        The build timed them on the machine it ran on; a worker on another CPU may rank them otherwise
        (int8 beats fp32 threefold with AVX-512 VNNI and loses to ONNX fp32 on an AVX2-only CPU). Each
        accepted graph is timed here once, on a batch of ``batch_size``, and the choice kept beside the
        model per CPU signature (classifier.artefacts.record_speed) for the next start."""
        passed = [n for n, r in (report.get("runtimes") or {}).items()
                  if r.get("passed") and not n.startswith("torch-cuda")]
        if len(passed) <= 1:
            return report["chosen"]
        signature = artefacts.cpu_signature()
        known = artefacts.read_speeds(path).get(signature["key"]) or {}
        if known.get("report") == report.get("created") and known.get("chosen") in RUNTIMES:
            return known["chosen"]
        metadata = read_metadata(path)
        images = torch.rand(batch_size, 3, metadata.input_size, metadata.input_size, generator=torch.Generator()
                            .manual_seed(0))
        paths = artefacts.artefact_paths(path)
        runners = {}
        for name in sorted({{"onnx-int8-recheck": "onnx-int8"}.get(n, n) for n in passed}):
            try:
                runners[name] = (runtimes.TorchRunner(load_classifier(path)[0], torch.device("cpu"))
                                 if name == "torch-fp32" else runtimes.OnnxRunner(paths[name]))
            except (runtimes.FastPathError, OSError) as exc:
                log.warning("cannot time %s here: %s", name, exc)
                continue
            runners[name](images)  # warm-up: the first pass allocates
        # Rounds that take turns, and each runtime's fastest pass: a burst of other work on the machine (a
        # build, a test suite, uploads) slows one pass, not one runtime's every pass.
        fastest = dict.fromkeys(runners, math.inf)
        for _ in range(TIMING_ROUNDS):
            for name, runner in runners.items():
                start = time.perf_counter()
                runner(images)
                fastest[name] = min(fastest[name], time.perf_counter() - start)
        rates = {name: batch_size / seconds for name, seconds in fastest.items()}
        if "onnx-int8-recheck" in passed and "onnx-int8" in rates and "onnx-fp32" in rates:
            share = float(report["runtimes"]["onnx-int8-recheck"].get("rechecked_share") or 0.0)
            rates["onnx-int8-recheck"] = 1 / (1 / rates["onnx-int8"] + share / rates["onnx-fp32"])
        candidates = {n: r for n, r in rates.items() if n in passed}
        if not candidates:
            return report["chosen"]
        chosen = max(candidates, key=candidates.get)
        runtime = "torch" if chosen == "torch-fp32" else chosen
        log.info("runtimes timed on this CPU (%s), passes/s: %s; using %s", signature["name"],
                 ", ".join(f"{n} {r:.1f}" for n, r in sorted(rates.items())), runtime)
        try:
            kept = artefacts.record_speed(path, signature, {
                "report": report.get("created"), "chosen": runtime,
                "passes_per_s": {n: round(r, 2) for n, r in rates.items()}, "build_chose": report["chosen"]})
        except OSError as exc:  # a read-only model folder: measured again at the next start
            log.warning("cannot keep the runtime measurements: %s", exc)
            return runtime
        if kept["chosen"] != runtime and kept["chosen"] in RUNTIMES:
            log.info("another worker on this kind of CPU chose %s first; using it too", kept["chosen"])
            return kept["chosen"]
        return runtime

    @staticmethod
    def load_recheck(path, metadata: ModelMetadata) -> runtimes.Recheck:
        """The fp32 graph and the margin the fast-path report measured for the int8 graph's recheck."""
        entry = ((artefacts.read_report(path) or {}).get("runtimes") or {}).get("onnx-int8-recheck") or {}
        if not isinstance(entry.get("recheck_margin"), (int, float)):
            raise runtimes.FastPathError("the fast-path report has no recheck margin for the int8 graph")
        exact = runtimes.OnnxRunner(artefacts.artefact_paths(path)["onnx-fp32"])
        return runtimes.Recheck(exact, threshold_logit(metadata), float(entry["recheck_margin"]), metadata.views)

    @staticmethod
    def int8_error_margin(path) -> float:
        """How far the int8 graph may move a logit, as the fast-path build measured it (the recheck's
        margin, twice the largest int8 - fp32 difference it saw): an early decision on int8 logits
        keeps this much farther from every edge. Infinite without a measurement: no early decisions."""
        return Predictor.measured_error_margin(path, "onnx-int8-recheck", "recheck_margin")

    @staticmethod
    def measured_error_margin(path, runtime: str, key: str = "cascade_margin") -> float:
        """A runtime's logit error margin as the fast-path report records it (int8's recheck margin; fp16's
        and bf16's on the GPU the build ran on, classifier.training.fastpath.check_cuda); infinite
        where the report has none, so that runtime makes no early decisions."""
        entry = ((artefacts.read_report(path) or {}).get("runtimes") or {}).get(runtime) or {}
        margin = entry.get(key)
        return float(margin) if isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0 \
            else math.inf

    def with_check(self, path) -> "Predictor":
        # The gate trained against other pictures (classifier.lesiongate) where the weights have one, else the
        # distance check in the model file: same interface (distances, cutoff), stored the same way.
        try:
            self.lesion_check = lesiongate.load(path, self.metadata.weights_version)
        except lesiongate.GateError as exc:
            log.warning("no lesion gate: %s", exc)
            self.lesion_check = None
        if self.lesion_check is None:
            self.lesion_check = lesioncheck.load(path, self.metadata)
        try:
            self.differential = differential.load(path, self.metadata.weights_version)
        except differential.DifferentialError as exc:
            log.warning("no differential: %s", exc)
        return self

    def differentials(self, embeddings) -> list[dict] | None:
        """Each image's differential diagnosis ({class: probability}) from its embedding, or None where
        the model has no differential head or the runtime gave no embeddings."""
        if self.differential is None or embeddings is None:
            return None
        return self.differential.as_dicts(embeddings.numpy())

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def threshold(self) -> float:
        return float(self.metadata.threshold)

    def decide(self, probability: float) -> str:
        return self.metadata.class_names[1] if probability >= self.threshold else self.metadata.class_names[0]

    def load_image(self, source) -> Image.Image:
        """Open a path or file object as RGB, decoding large JPEGs at reduced scale."""
        img = source if isinstance(source, Image.Image) else Image.open(source)
        if img.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing: a 4000 px
            # dermoscopy image needs no full decode to become 224 px.
            img.draft("RGB", (self.metadata.input_size * 2, self.metadata.input_size * 2))
        return img.convert("RGB")

    def prepare(self, source) -> torch.Tensor:
        """One image (a path, file object or PIL image), decoded and transformed."""
        return self.transform(self.load_image(source))

    def _map(self, fn, items: list) -> list:
        """``fn`` over ``items`` in order, on the ``decoders`` threads where there are several."""
        if self.decoders <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        if self._decode_pool is None or self._decode_pool[0] != self.decoders:
            if self._decode_pool is not None:
                self._decode_pool[1].shutdown()
            self._decode_pool = (self.decoders, ThreadPoolExecutor(self.decoders, thread_name_prefix="decode"))
        return list(self._decode_pool[1].map(fn, items))

    def preprocess(self, images) -> torch.Tensor:
        """Decode and transform images (paths, file objects or PIL images) into one float batch."""
        return torch.stack(self._map(self.prepare, list(images)))

    def preprocess_each(self, sources) -> list:
        """Each source decoded and transformed, or the exception that stopped it: one unreadable image
        does not cost the others of its batch their result (the worker's batches)."""

        def prepare_or_error(source):
            try:
                return self.prepare(source)
            except Exception as exc:  # handed back, to be told apart by the caller
                return exc

        return self._map(prepare_or_error, list(sources))

    def probabilities(self, images) -> list[float]:
        return self.run(self.preprocess(images))

    def run(self, batch: torch.Tensor) -> list[float]:
        """Probabilities of malignancy for an already preprocessed batch: the model file's test-time
        averaging (the 8 rotations/mirror images, logits averaged) and calibration applied."""
        return self.assess(batch)[0]

    def assess(self, batch: torch.Tensor) -> "Assessment":
        """Probabilities as ``run``, with each image's lesion-check distance, the orientations
        averaged and its embedding (``Assessment``)."""
        logits, features, views, embeddings = self._forward(batch)
        distances = None
        if self.lesion_check is not None and features is not None:
            distances = self.lesion_check.distances(features, batch).tolist()
        return Assessment(self.calibrate(logits).tolist(), distances, views.tolist(), embeddings)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The (view-averaged, uncalibrated) logit of each image of a preprocessed batch."""
        return self._forward(batch)[0]

    def _forward(self, batch: torch.Tensor):
        """(view-averaged logits, pooled features of the first view (the image as given: the lesion
        check's), the number of views averaged per image, pooled features averaged over those views (the
        embedding; None where the runtime gives no features)): all the model's views, or as few as its
        cascade needs."""
        first = self.runner.both(batch)
        if self.cascade is not None:
            logits, views, embeddings = self.cascade.run_with_features(self.runner, batch, first=first)
        else:
            logits, embeddings = runtimes.averaged(self.runner, batch, self.metadata.views, first=first)
            views = torch.full((len(batch),), self.metadata.views, dtype=torch.long)
        if self.recheck is not None:
            logits, rerun, rerun_views, embeddings = self.recheck.rerun(batch, logits, embeddings)
            views[rerun] = rerun_views
        return logits, first[1], views, embeddings

    def view_logits(self, batch: torch.Tensor, views: int = DIHEDRAL_VIEWS) -> torch.Tensor:
        """(n, views) logits of the first ``views`` rotations/mirror images of each image
        (``runtime.per_view_logits``)."""
        return runtimes.per_view_logits(self.runner, batch, views)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        cal = self.metadata.calibration or {}
        return (logits * float(cal.get("scale", 1.0)) + float(cal.get("bias", 0.0))).sigmoid()

    def predict(self, images) -> list[Prediction]:
        images = list(images)
        if not images:
            return []
        start = time.perf_counter()
        probs, distances, views, _ = self.assess(self.preprocess(images))
        ms = (time.perf_counter() - start) * 1000 / len(images)
        cutoff = self.lesion_check.cutoff if distances is not None else None
        return [
            Prediction(
                probability=p,
                decision=self.decide(p),
                threshold=self.threshold,
                model_version=self.version,
                ms=round(ms, 1),
                lesion_distance=None if distances is None else round(distances[i], 3),
                lesion_cutoff=cutoff,
                views=views[i],
            )
            for i, p in enumerate(probs)
        ]
