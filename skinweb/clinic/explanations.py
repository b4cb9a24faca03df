"""Grad-CAM heat maps for predictions, computed by a worker after the result is stored.

The result is never held back for its explanation: the probability appears as soon as the batch
is classified, and the heat map follows (the case page polls for it). One task explains one
batch's predictions in one backward pass, with the PyTorch weights of the version that made them.
"""

import logging
import threading

import numpy as np
import torch
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from classifier.explain import Explainer, heatmap_png
from classifier.modelfile import ModelFileError
from classifier.predictor import resolve_device
from skinweb.clinic.models import Prediction

log = logging.getLogger(__name__)

HEATMAP_MAX_PX = 1024
EXPLAIN_CHUNK = 2
_explainers: dict[str, Explainer] = {}
_lock = threading.Lock()


def get_explainer(version) -> Explainer:
    with _lock:
        if version.version not in _explainers:
            _explainers.clear()  # keep one model's weights, as the predictor cache does
            device = str(resolve_device(settings.INFERENCE_DEVICE))
            _explainers[version.version] = Explainer.from_file(version.path, device=device)
        return _explainers[version.version]


def explain_predictions(prediction_ids) -> int:
    """Compute and store the heat maps of these predictions; returns how many were stored.

    Idempotent: predictions that already have a heat map are skipped. A failure is stored as the
    prediction's explanation_error (the page then says the heat map is unavailable, and why).
    """
    todo = list(Prediction.objects.filter(pk__in=prediction_ids, heatmap="").select_related("case", "model_version"))
    by_version: dict[int, list[Prediction]] = {}
    for p in todo:
        by_version.setdefault(p.model_version_id, []).append(p)
    stored = 0
    for predictions in by_version.values():
        version = predictions[0].model_version
        try:
            explainer = get_explainer(version)
        except (ModelFileError, OSError, RuntimeError) as exc:
            log.exception("cannot load model %s for explanations", version.version)
            _fail(predictions, f"The model file of {version.version} could not be loaded ({exc}).")
            continue
        ready, batch, sizes = [], [], []
        for p in predictions:
            try:
                with default_storage.open(p.case.image.name, "rb") as f, Image.open(f) as img:
                    rgb = img.convert("RGB")
                batch.append(explainer.transform(rgb))
                scale = min(1.0, HEATMAP_MAX_PX / max(rgb.size))  # same aspect ratio, laid over the image
                sizes.append((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
                ready.append(p)
            except (OSError, Image.DecompressionBombError) as exc:
                _fail([p], f"The stored image could not be read ({exc}).")
        if not ready:
            continue
        try:
            # A few images per backward pass: Grad-CAM keeps every activation for the gradients
            # (docs/benchmarks.md, "Figures behind the defaults"), and the worker's memory budget is 1 GB.
            # Each map averages the orientations its decision averaged (Prediction.views).
            decisions = [p.decision == "malignant" for p in ready]
            views = [p.views or 1 for p in ready]
            maps = np.concatenate(
                [
                    explainer.heatmaps(torch.stack(batch[i : i + EXPLAIN_CHUNK]), decisions[i : i + EXPLAIN_CHUNK],
                                       views[i : i + EXPLAIN_CHUNK])
                    for i in range(0, len(batch), EXPLAIN_CHUNK)
                ]
            )
        except Exception as exc:
            log.exception("Grad-CAM failed for predictions %s", [p.pk for p in ready])
            _fail(ready, f"The heat map could not be computed ({type(exc).__name__}).")
            continue
        for p, heat, size in zip(ready, maps, sizes):
            name = default_storage.save(Prediction.heatmap.field.generate_filename(p, "heatmap.png"),
                                        ContentFile(heatmap_png(heat, size)))
            updated = Prediction.objects.filter(pk=p.pk, heatmap="").update(heatmap=name, explained_at=timezone.now(),
                                                                            explanation_error="")
            if updated:
                stored += 1
            else:  # another delivery stored one first
                default_storage.delete(name)
    return stored


def _fail(predictions, reason):
    Prediction.objects.filter(pk__in=[p.pk for p in predictions]).update(explanation_error=reason)
