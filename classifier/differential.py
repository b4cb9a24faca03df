"""The differential diagnosis: probabilities over the lesion classes (classifier.reference.CLASSES) from
an image's embedding, by a multinomial logistic regression on the model's own pooled features.

Its weights live in a file beside the model file, ``<name>.differential.safetensors`` (the model file
and its 30 MB stay as they are), tied to the model version it was fitted on: a head read for another
version is refused, as its features mean something else. It is fitted by
``python -m classifier.training.differential``; measured against a vote of the nearest reference
images in docs/experiments.md ("The differential"). The benign/malignant probability, threshold
and band stay the model's headline; this is the evidence beside it.

numpy and safetensors only: cheap enough to run in the worker with every prediction.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from classifier.reference import CLASSES

FORMAT = "skinweb-differential/1"


class DifferentialError(ValueError):
    pass


def head_path(model_path) -> Path:
    return Path(model_path).with_suffix(".differential.safetensors")


@dataclasses.dataclass
class Differential:
    weight: np.ndarray  # (classes, d)
    bias: np.ndarray  # (classes,)
    mean: np.ndarray  # (d,) standardisation of the embedding
    scale: np.ndarray  # (d,)
    classes: tuple[str, ...]
    meta: dict

    def logits(self, embeddings) -> np.ndarray:
        x = (np.atleast_2d(np.asarray(embeddings, np.float64)) - self.mean) / self.scale
        return x @ self.weight.T.astype(np.float64) + self.bias

    def probabilities(self, embeddings) -> np.ndarray:
        """(n, classes) probabilities, each row summing to 1; calibrated where the head's file carries a
        calibration fitted on held-out images (softmax(logits / temperature + class offsets))."""
        return calibrated(self.logits(embeddings), self.meta.get("calibration"))

    def as_dicts(self, embeddings) -> list[dict[str, float]]:
        """Each image's differential, {class: probability} in class order, rounded for storage."""
        return [{c: round(float(p), 4) for c, p in zip(self.classes, row)} for row in self.probabilities(embeddings)]


def calibrated(logits, calibration: dict | None) -> np.ndarray:
    """softmax(logits / T + offsets): the class-weighted fit's logits are too far apart (a 100% beside a
    malignancy probability of 0.85) and lean towards the rare classes; one temperature and one offset per class,
    fitted on held-out images, bring them to what those images show (classifier.training.differential)."""
    z = np.atleast_2d(np.asarray(logits, np.float64))
    if calibration:
        z = z / float(calibration["temperature"]) + np.asarray(calibration.get("offsets") or 0.0, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def save(path, weight, bias, mean, scale, meta: dict) -> None:
    from safetensors.numpy import save_file

    tensors = {"weight": np.asarray(weight, np.float32), "bias": np.asarray(bias, np.float32),
               "mean": np.asarray(mean, np.float32), "scale": np.asarray(scale, np.float32)}
    header = json.dumps({"format": FORMAT, "classes": list(CLASSES), **meta})
    save_file(tensors, str(path), metadata={"skinweb": header})


def load(model_path, model_version: str) -> Differential | None:
    """The head beside a model file, None when there is none; DifferentialError when it is unreadable,
    malformed or fitted on another model version."""
    from safetensors import SafetensorError, safe_open

    path = head_path(model_path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("skinweb", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DifferentialError(f"{path.name} cannot be read ({exc})") from None
    if meta.get("format") != FORMAT or tuple(meta.get("classes", ())) != CLASSES:
        raise DifferentialError(f"{path.name} is not a differential head of this format")
    if meta.get("model_version") != model_version:
        raise DifferentialError(f"{path.name} was fitted on model {meta.get('model_version')}, not {model_version}")
    try:
        w, b, mean, scale = (tensors[k].astype(np.float32) for k in ("weight", "bias", "mean", "scale"))
    except KeyError as exc:
        raise DifferentialError(f"{path.name} lacks the tensor {exc}") from None
    cal = meta.get("calibration")
    if cal is not None and not (isinstance(cal, dict) and isinstance(cal.get("temperature"), (int, float))
                                and cal["temperature"] > 0 and len(cal.get("offsets") or [0] * len(CLASSES))
                                == len(CLASSES)):
        raise DifferentialError(f"{path.name} has a malformed calibration")
    if w.shape[0] != len(CLASSES) or b.shape != (len(CLASSES),) or not mean.shape == scale.shape == (w.shape[1],) \
            or not all(np.isfinite(t).all() for t in (w, b, mean, scale)) or (scale <= 0).any():
        raise DifferentialError(f"{path.name} has tensors of the wrong shape or values")
    return Differential(w, b, mean, scale, CLASSES, meta)
