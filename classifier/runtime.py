"""What runs a model on every prediction: the PyTorch runner, the ONNX runner, and the recheck that
gives an int8 graph's borderline images to the fp32 graph.

The fast-path report (classifier.artefacts) names the runtime that passed the accuracy guard;
``Predictor.from_file`` reads it and builds the runner here. Building
the artefacts (export, quantisation, the guard) lives in classifier.training.fastpath and is never imported
on the prediction path.
"""

import os
from pathlib import Path

import torch

from classifier.presets import dihedral


class FastPathError(RuntimeError):
    pass


def default_threads() -> int:
    return int(os.environ.get("SKINWEB_INFERENCE_THREADS", "0")) or (os.cpu_count() or 1)


class OnnxRunner:
    """Runs an ONNX graph on the CPU: a float32 NCHW batch in, one logit per image out (and, from
    graphs exported with them, the pooled features: ``both``)."""

    def __init__(self, path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is in requirements.txt
            raise FastPathError("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps the largest batch's activations allocated (bounded: workers cap the batch at
        # INFERENCE_BATCH_SIZE); without it every call maps and faults in fresh pages, which is
        # measurably slower (docs/benchmarks.md, "Figures behind the defaults").
        options.enable_cpu_mem_arena = True
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for a bad file
            raise FastPathError(f"cannot load {Path(path).name}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.both(batch)[0]

    def both(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, pooled features or None for a graph without them)."""
        logits, *features = self.session.run(None, {self.input_name: batch.contiguous().numpy()})
        return torch.from_numpy(logits).reshape(-1), torch.from_numpy(features[0]) if features else None


CUDA_DTYPES = {"torch-cuda-fp16": torch.float16, "torch-cuda-bf16": torch.bfloat16, "torch-cuda-fp32": None}


class TorchRunner:
    """The PyTorch model itself: the fp32 reference on CPU; on CUDA with fp16 or bf16 autocast when
    ``dtype`` says so (the fast-path report says which passed the accuracy guard). Channels-last on
    both: on this project's CPU fp32 runs 6.3 forward passes/s against 5.0 in the default layout, the
    logits equal to 2e-5 (docs/benchmarks.md)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None):
        self.device = device
        self.dtype = dtype if device.type == "cuda" else None
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.both(batch)[0]

    @torch.inference_mode()
    def both(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled features): the features come with the logits at no extra cost."""
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                logits, features = self.model.forward_with_features(batch)
        else:
            logits, features = self.model.forward_with_features(batch.contiguous(memory_format=torch.channels_last))
        return logits.float().reshape(-1).cpu(), features.float().cpu()


def per_view_logits(runner, batch: torch.Tensor, views: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """(n, views) logits of each image's first ``views`` rotations/mirror images. One runner call per
    view, not one batch of all views: activation memory stays that of the batch (docs/benchmarks.md), and
    int8 speed is flat in the batch size. ``first``: the upright view's logits when the
    caller has them already."""
    upright = runner(batch) if first is None else first
    return torch.stack([upright, *(runner(dihedral(batch, k)) for k in range(1, views))], dim=1)


def averaged_logits(runner, batch: torch.Tensor, views: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's logit averaged over its first ``views`` rotations/mirror images (``per_view_logits``)."""
    return per_view_logits(runner, batch, views, first).mean(1)


def averaged(runner, batch: torch.Tensor, views: int, first=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logit, pooled features) of each image, both averaged over its first ``views`` rotations/mirror
    images; ``first``: (logits, features) of the upright view when the caller has them. Features are
    None where the runner gives none (an ONNX graph exported without them)."""
    both = getattr(runner, "both", None) or (lambda b: (runner(b), None))  # a plain callable: logits only
    logits, features = both(batch) if first is None else first
    logits, features = logits.double(), None if features is None else features.double()
    for k in range(1, views):
        z, f = both(dihedral(batch, k))
        logits = logits + z.double()
        features = None if features is None or f is None else features + f.double()
    return (logits / views).float(), None if features is None else (features / views).float()


class Recheck:
    """Runs again, on an exact (fp32) runner, every image whose fast (int8) averaged logit lies within
    ``margin`` of the threshold's logit, and keeps the exact logit for it. int8 moves a logit by a
    bounded amount (measured when the artefacts are built), so only an image that close to the
    threshold can have its decision changed by it; a few percent of images then cost one fp32 pass
    more, and every decision is fp32's as long as the error stays within the margin (the build's
    guard checks that on images not used to choose the margin)."""

    def __init__(self, exact, threshold_logit: float, margin: float, views: int, cascade=None):
        self.exact = exact
        self.low, self.high = threshold_logit - margin, threshold_logit + margin
        self.views = views
        # The model's cascade (classifier.cascade), run on the exact runner: a rerun image then gets
        # exactly the exact runner's result, on no more views than that needs.
        self.cascade = cascade
        self.images = self.rechecked = 0  # counts, for the build's report and the benchmark

    def __call__(self, batch: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.rerun(batch, logits)[0]

    def near(self, logits: torch.Tensor) -> torch.Tensor:
        """The indices of the images whose logit the exact runner must give (counted)."""
        near = ((logits > self.low) & (logits < self.high)).nonzero().flatten()
        self.images += len(logits)
        self.rechecked += len(near)
        return near

    def rerun(self, batch: torch.Tensor, logits: torch.Tensor, embeddings: torch.Tensor | None = None):
        """(the logits with the borderline ones replaced by the exact runner's, the indices of the images
        rerun, the views the exact runner averaged for each of them, the embeddings with the rerun
        images' replaced by the exact runner's over the same views; None stays None)."""
        near = self.near(logits)
        views = torch.full((len(near),), self.views, dtype=torch.long)
        if not len(near):
            return logits, near, views, embeddings
        if self.cascade is not None:
            exact, views, features = self.cascade.run_with_features(self.exact, batch[near])
        else:
            exact, features = averaged(self.exact, batch[near], self.views)
        logits, embeddings = self.replace(logits, embeddings, near, exact, features)
        return logits, near, views, embeddings

    @staticmethod
    def replace(logits, embeddings, near, exact, features):
        """``logits`` and ``embeddings`` with the images ``near``'s replaced by the exact runner's ``exact``
        and ``features`` (embeddings without features become None; None stays None)."""
        logits = logits.clone()
        logits[near] = exact.to(logits.dtype)
        if embeddings is not None and len(near):
            if features is None:
                return logits, None
            embeddings = embeddings.clone()
            embeddings[near] = features.to(embeddings.dtype)
        return logits, embeddings
