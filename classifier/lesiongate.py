"""Is this a dermoscopic image of a skin lesion at all? A logistic regression on the model's pooled features,
trained against pictures that are not (issue 43), beside the weights as ``<name>.lesion-gate.json``.

The distance check in the model file (classifier.lesioncheck) measures how far an image is from the training
images; faces, documents and textures lie no farther from them than many lesions do in those features, and it
let 4 of 5 such pictures through. The gate is trained to tell the two apart (classifier.training.lesiongate);
where a model has one, the worker uses it in the distance check's place: its score (the log-odds of "not a
dermoscopic lesion") is stored as the prediction's ``lesion_distance`` and its threshold as ``lesion_cutoff``,
so a score above the threshold withholds the result as before. Tied to the weights it was fitted on (their
features mean nothing to another network). numpy only: cheap in the worker.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

FORMAT = "skinweb-lesion-gate/1"


class GateError(ValueError):
    pass


def gate_path(model_path) -> Path:
    return Path(model_path).with_suffix(".lesion-gate.json")


@dataclasses.dataclass
class LesionGate:
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    cutoff: float  # the threshold on the score
    meta: dict

    def scores(self, features) -> np.ndarray:
        """The log-odds that each image (its pooled features, n x d) is not a dermoscopic lesion."""
        x = (np.atleast_2d(np.asarray(features, np.float64)) - self.mean) / self.scale
        return x @ self.weight + self.bias

    def distances(self, features):
        """The scores as a torch tensor: the distance check's interface (classifier.lesioncheck.LesionCheck)."""
        import torch

        return torch.from_numpy(self.scores(features.float().cpu().numpy() if hasattr(features, "numpy")
                                            else features))


def save(path, gate: LesionGate) -> None:
    body = {"format": FORMAT, **gate.meta, "threshold": float(gate.cutoff), "bias": float(gate.bias),
            "mean": [round(float(v), 6) for v in gate.mean], "scale": [round(float(v), 6) for v in gate.scale],
            "weight": [round(float(v), 8) for v in gate.weight]}
    Path(path).write_text(json.dumps(body))


def load(model_path, weights_version: str) -> LesionGate | None:
    """The gate beside a model file, None without one; GateError when unreadable or for other weights."""
    path = gate_path(model_path)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GateError(f"{path.name} cannot be read ({exc})") from None
    if body.get("format") != FORMAT:
        raise GateError(f"{path.name} is not a lesion gate of this format")
    if body.get("weights_version") != weights_version:
        raise GateError(f"{path.name} was fitted on {body.get('weights_version')}, not {weights_version}")
    try:
        mean, scale, weight = (np.asarray(body[k], np.float64) for k in ("mean", "scale", "weight"))
        bias, cutoff = float(body["bias"]), float(body["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GateError(f"{path.name} lacks {exc}") from None
    if not (mean.shape == scale.shape == weight.shape and mean.ndim == 1) or (scale <= 0).any() \
            or not all(np.isfinite(a).all() for a in (mean, scale, weight)):
        raise GateError(f"{path.name} has vectors of the wrong shape or values")
    meta = {k: v for k, v in body.items() if k not in ("mean", "scale", "weight", "bias", "threshold", "format")}
    return LesionGate(mean, scale, weight, bias, cutoff, meta)
