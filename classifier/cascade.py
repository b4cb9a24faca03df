"""Deciding early when it is safe: a model that averages its logit over the 8 rotations and mirror
images runs them in stages (1, then 2, 3, 4 and 8 views, say) and stops an image as soon as its
running mean lies far enough from every edge its result depends on, the threshold and the borderline
band's two ends, that the remaining views cannot carry it across. Only an image near an edge pays for
all the views.

How far is far enough grows with the image: the remaining views move a large logit more than a small
one, and move it more when the views seen so far disagree. At a stage with running mean m of the
views seen, whose largest and smallest logits are ``spread`` apart, the scale is
``sigma = 1 + alpha * |m| + beta * spread``, and the image stops when |m - threshold| exceeds
``margins[stage] * sigma`` and its distance to each band end exceeds ``band_margins[stage] * sigma``.
The margins are fitted on the model's validation split (classifier.training.cascade) and stored in the
model file's metadata (``cascade``), so every runtime applies the same rule; an image that runs all
the views gets exactly the full average. ``decide_from_views`` applies the rule to logits already
computed for every view (fitting, evaluation); ``run`` applies it with a runner, computing only the
views it needs. Both stop the same images at the same stage (a test holds them to it).
"""

import dataclasses
import math

import numpy as np
import torch

from classifier.presets import DIHEDRAL_VIEWS, dihedral


def probability_to_logit(p: float, calibration: dict | None) -> float:
    """The view-averaged, uncalibrated logit at which the calibrated probability equals ``p``."""
    cal = calibration or {}
    return (math.log(p / (1 - p)) - float(cal.get("bias", 0.0))) / float(cal.get("scale", 1.0))


def band_logits(band, calibration: dict | None) -> tuple[float, ...]:
    """The band's ends (probabilities; none for a file without a band) as logits, ascending."""
    return tuple(sorted(probability_to_logit(float(p), calibration) for p in band or () if 0 < float(p) < 1))


@dataclasses.dataclass(frozen=True)
class Cascade:
    stages: tuple[int, ...]  # views averaged after each stage, ascending; the last is all of them
    margins: tuple[float, ...]  # threshold margin per stage but the last, in units of sigma
    band_margins: tuple[float, ...]  # band-end margin per stage but the last, in units of sigma
    order: tuple[int, ...]  # the dihedral views (classifier.presets.dihedral's k) in the order they are run
    threshold: float  # the threshold as a logit
    band: tuple[float, ...] = ()  # the band's ends as logits
    alpha: float = 0.0  # sigma's growth with |running mean|
    beta: float = 0.0  # sigma's growth with the spread of the views seen
    error: float = 0.0  # a runtime's own error bound per view, in logits (int8): the margins allow for it

    @classmethod
    def from_spec(cls, spec: dict, threshold: float, band=()) -> "Cascade":
        return cls(tuple(spec["stages"]), tuple(spec["margins"]), tuple(spec.get("band_margins", spec["margins"])),
                   tuple(spec["order"]), float(threshold), tuple(band), float(spec.get("alpha", 0.0)),
                   float(spec.get("beta", 0.0)))

    @classmethod
    def from_metadata(cls, metadata) -> "Cascade | None":
        """The model file's cascade, or None where it has none (every view is then run for every image)."""
        spec = metadata.cascade or {}
        if not spec or metadata.views <= 1 or float((metadata.calibration or {}).get("scale", 1.0)) <= 0:
            return None
        threshold = probability_to_logit(float(metadata.threshold), metadata.calibration)
        return cls.from_spec(spec, threshold, band_logits((metadata.operating_point or {}).get("band"),
                                                          metadata.calibration))

    def widened(self, error: float) -> "Cascade":
        """The same cascade for a runtime whose logit for a view may be ``error`` off the exact one
        (int8): a stop on its logits is then a stop on the exact logits too. Its running mean may be
        ``error`` off, the spread of its views 2 ``error`` and so sigma ``error`` (alpha + 2 beta) off,
        so each margin grows by ``error`` (1 + margin (alpha + 2 beta)) (no spread term for one view)."""
        return dataclasses.replace(self, error=float(error))

    def stops(self, mean, spread, stage: int):
        """Which images may stop after stage ``stage`` (an index into ``stages``), given their running
        mean and the spread of the views seen; numpy arrays or tensors alike."""
        if stage == len(self.stages) - 1:  # the last stage has every view: everything stops
            return np.ones(len(mean), bool) if isinstance(mean, np.ndarray) else torch.ones(len(mean), dtype=torch.bool)
        sigma = 1 + self.alpha * abs(mean) + self.beta * spread
        drift = self.alpha + (2 * self.beta if self.stages[stage] > 1 else 0.0)  # sigma's error per unit error
        margin, band_margin = self.margins[stage], self.band_margins[stage]
        stop = abs(mean - self.threshold) > margin * sigma + self.error * (1 + margin * drift)
        for end in self.band:
            stop &= abs(mean - end) > band_margin * sigma + self.error * (1 + band_margin * drift)
        return stop

    def decide_from_views(self, view_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logit, views used) per image from logits of all 8 views (n x 8, column k = dihedral view k)."""
        z = np.asarray(view_logits, dtype=np.float64)[:, list(self.order)]
        out, used = np.empty(len(z)), np.zeros(len(z), int)
        active = np.arange(len(z))
        for i, v in enumerate(self.stages):
            seen = z[active, :v]
            mean = seen.sum(1) / v
            stop = self.stops(mean, seen.max(1) - seen.min(1), i)
            out[active[stop]], used[active[stop]] = mean[stop], v
            active = active[~stop]
        return out, used

    def run(self, runner, batch: torch.Tensor, first: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit, views used) per image of a preprocessed batch; ``first``: the upright view's logits
        when the caller has them. One runner call per view, for the images still undecided only. (Not
        in inference mode itself: the runners are, and the tensors returned stay writable.)"""
        logits, used, _ = self.run_with_features(runner, batch, (first, None) if first is not None else None)
        return logits, used

    def run_with_features(self, runner, batch: torch.Tensor, first=None):
        """(logit, views used, pooled features averaged over the same views or None) per image: the
        embedding follows the views the decision averaged. ``first``: (logits, features) of the upright
        view when the caller has them (features None: no embedding). A runner without ``both`` (a
        plain callable) gives logits only."""
        both = getattr(runner, "both", None) or (lambda b: (runner(b), None))
        upright, features = both(batch) if first is None else first
        upright = upright.double()
        sums, high, low = upright.clone(), upright.clone(), upright.clone()
        fsums = None if features is None else features.double().clone()
        out, used = torch.empty(len(batch), dtype=torch.float64), torch.zeros(len(batch), dtype=torch.long)
        active, done = torch.arange(len(batch)), 1
        for i, v in enumerate(self.stages):
            for k in self.order[done:v]:
                z, f = both(dihedral(batch[active], k))
                z = z.double()
                sums[active] += z
                high[active] = torch.maximum(high[active], z)
                low[active] = torch.minimum(low[active], z)
                if fsums is not None and f is not None:
                    fsums[active] += f.double()
                elif f is None:
                    fsums = None
            done = v
            mean = sums[active] / v
            stop = self.stops(mean, high[active] - low[active], i)
            out[active[stop]], used[active[stop]] = mean[stop], v
            active = active[~stop]
            if not len(active):
                break
        embeddings = None if fsums is None else (fsums / used.unsqueeze(1)).float()
        return out.float(), used, embeddings


def validate_spec(spec: dict) -> None:
    """Raise ValueError unless ``spec`` is a well-formed ``cascade`` record (modelfile checks it on read)."""
    stages, order = spec.get("stages"), spec.get("order")
    if not (isinstance(stages, list) and stages and all(isinstance(v, int) for v in stages)
            and stages == sorted(set(stages)) and stages[0] >= 1 and stages[-1] == DIHEDRAL_VIEWS):
        raise ValueError(f"cascade stages {stages!r} must rise from 1 or more to {DIHEDRAL_VIEWS}")
    for key in ("margins", "band_margins"):
        margins = spec.get(key, spec.get("margins"))
        if not (isinstance(margins, list) and len(margins) == len(stages) - 1
                and all(isinstance(m, (int, float)) and m >= 0 and math.isfinite(m) for m in margins)):
            raise ValueError(f"cascade {key} {margins!r}: one finite margin >= 0 per stage but the last")
    for key in ("alpha", "beta"):
        value = spec.get(key, 0.0)
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"cascade {key} {value!r} must be a finite number >= 0")
    if not (isinstance(order, list) and sorted(order) == list(range(DIHEDRAL_VIEWS)) and order[0] == 0):
        raise ValueError(f"cascade order {order!r} must be the {DIHEDRAL_VIEWS} views, the upright one first")
