"""Is this a dermoscopic image of a skin lesion at all? A logistic regression on the model's pooled features and
a few colour and texture figures of the picture (``picture_statistics``), trained against pictures that are not
(issue 43), and the range those figures take on the training lesions (the envelope: a picture outside it is
unlike every lesion trained on, whatever the regression learnt from the few other pictures it saw); beside the
weights as ``<name>.lesion-gate.json``.

The distance check in the model file (classifier.lesioncheck) measures how far an image is from the training
images; faces, documents and textures lie no farther from them than many lesions do in those features, and it
let 4 of 5 such pictures through. The gate is trained to tell the two apart (classifier.training.lesiongate);
where a model has one, the worker uses it in the distance check's place: its score (the log-odds of "not a
dermoscopic lesion") is stored as the prediction's ``lesion_distance`` and its threshold as ``lesion_cutoff``,
so a score above the threshold withholds the result as before. A picture outside the envelope scores above the
threshold by ``ENVELOPE_SLOPE`` times how far outside it lies (in units of the figure's range). Tied to the weights
it was fitted on (their features mean nothing to another network). Cheap in the worker: numpy, and a pass over
the preprocessed batch.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

FORMAT = "skinweb-lesion-gate/2"
FORMATS = ("skinweb-lesion-gate/1", FORMAT)  # /1: features only, no envelope
ENVELOPE_SLOPE = 10.0


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
    envelope_low: np.ndarray | None = None  # the picture statistics' range on the training lesions (format /2)
    envelope_high: np.ndarray | None = None
    input_mean: tuple = (0.485, 0.456, 0.406)  # the model's normalisation, to read the batch's colours
    input_std: tuple = (0.229, 0.224, 0.225)

    @property
    def uses_statistics(self) -> bool:
        return self.envelope_low is not None

    def statistics(self, batch) -> np.ndarray:
        return picture_statistics(batch, self.input_mean, self.input_std)

    def scores(self, features, statistics=None) -> np.ndarray:
        """The log-odds that each image (its pooled features, n x d; and its picture statistics, n x k, where the
        gate uses them) is not a dermoscopic lesion, raised above the threshold outside the envelope."""
        z = self.regression_scores(features, statistics)
        if not self.uses_statistics:
            return z
        return np.maximum(z, self.cutoff + ENVELOPE_SLOPE * self.outside(statistics))

    def regression_scores(self, features, statistics=None) -> np.ndarray:
        """The logistic regression's log-odds alone (the envelope not applied)."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if self.uses_statistics:
            if statistics is None:
                raise ValueError("this lesion gate needs the pictures' statistics (pass the batch)")
            x = np.hstack([x, np.atleast_2d(np.asarray(statistics, np.float64))])
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def outside(self, statistics) -> np.ndarray:
        """How far each picture lies outside the envelope, in units of each figure's range (negative: inside)."""
        span = self.envelope_high - self.envelope_low
        st = np.atleast_2d(np.asarray(statistics, np.float64))
        return np.maximum((self.envelope_low - st) / span, (st - self.envelope_high) / span).max(1)

    def distances(self, features, batch=None):
        """The scores as a torch tensor: the distance check's interface (classifier.lesioncheck.LesionCheck);
        ``batch``: the preprocessed images the features came from."""
        import torch

        x = features.float().cpu().numpy() if hasattr(features, "numpy") else features
        return torch.from_numpy(self.scores(x, self.statistics(batch) if self.uses_statistics else None))


STATISTICS = ("saturation_median", "grey_share", "edge_to_contrast", "log_colours", "luminance_std", "edge",
              "red_minus_blue", "luminance_mean")


def picture_statistics(batch, mean, std) -> np.ndarray:
    """(n, len(STATISTICS)) colour and texture figures of a preprocessed batch (n, 3, H, W), as the model sees it:
    how saturated, how grey, how much fine edge against the contrast, how many distinct colours (16 levels a
    channel), how bright and how red. Documents, screenshots, solid colours, noise and textures lie outside the
    range dermoscopic images take on these, whatever the network's features make of them."""
    import torch

    m = torch.as_tensor(mean, dtype=batch.dtype).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=batch.dtype).view(1, 3, 1, 1)
    x = (batch.detach().float().cpu() * s + m).clamp(0, 1)
    hi, lo = x.max(1).values, x.min(1).values
    saturation = (hi - lo) / (hi + 1e-6)
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    lap = (4 * lum[:, 1:-1, 1:-1] - lum[:, :-2, 1:-1] - lum[:, 2:, 1:-1] - lum[:, 1:-1, :-2] - lum[:, 1:-1, 2:]).abs()
    q = (x * 15.999).long()
    codes = (q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]).flatten(1)
    colours = torch.tensor([float(torch.unique(c).numel()) for c in codes])
    lum_std = lum.flatten(1).std(1)
    edge = lap.flatten(1).mean(1)
    out = torch.stack([saturation.flatten(1).median(1).values, ((hi - lo) < 0.06).float().flatten(1).mean(1),
                       edge / (lum_std + 0.02), colours.log(), lum_std, edge,
                       (x[:, 0] - x[:, 2]).flatten(1).mean(1), lum.flatten(1).mean(1)], 1)
    return out.double().numpy()


def save(path, gate: LesionGate) -> None:
    body = {"format": FORMAT if gate.uses_statistics else FORMATS[0], **gate.meta, "threshold": float(gate.cutoff),
            "bias": float(gate.bias)}
    if gate.uses_statistics:
        body["statistics"] = {"names": list(STATISTICS), "input_mean": list(gate.input_mean),
                              "input_std": list(gate.input_std),
                              "envelope_low": [round(float(v), 6) for v in gate.envelope_low],
                              "envelope_high": [round(float(v), 6) for v in gate.envelope_high]}
    body.update({"mean": [round(float(v), 6) for v in gate.mean], "scale": [round(float(v), 6) for v in gate.scale],
                 "weight": [round(float(v), 8) for v in gate.weight]})
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
    if body.get("format") not in FORMATS:
        raise GateError(f"{path.name} is not a lesion gate of a format this version reads")
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
    extra = {}
    if body["format"] == FORMAT:
        try:
            st = body["statistics"]
            if list(st["names"]) != list(STATISTICS):
                raise GateError(f"{path.name} uses picture statistics this version does not compute")
            low, high = np.asarray(st["envelope_low"], np.float64), np.asarray(st["envelope_high"], np.float64)
            extra = {"envelope_low": low, "envelope_high": high, "input_mean": tuple(map(float, st["input_mean"])),
                     "input_std": tuple(map(float, st["input_std"]))}
        except (KeyError, TypeError, ValueError) as exc:
            raise GateError(f"{path.name} lacks {exc}") from None
        if low.shape != high.shape or low.shape != (len(STATISTICS),) or not (high > low).all() \
                or len(extra["input_mean"]) != 3 or len(extra["input_std"]) != 3:
            raise GateError(f"{path.name} has an envelope of the wrong shape or values")
    meta = {k: v for k, v in body.items()
            if k not in ("mean", "scale", "weight", "bias", "threshold", "format", "statistics")}
    return LesionGate(mean, scale, weight, bias, cutoff, meta, **extra)
