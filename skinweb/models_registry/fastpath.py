"""Build a model version's fast CPU artefacts (classifier.fastpath) from the data it was trained on."""

import logging
from pathlib import Path

from django.conf import settings

from classifier import fastpath
from classifier.data import DatasetError
from classifier.modelfile import ModelFileError
from skinweb.models_registry.models import ModelVersion

log = logging.getLogger(__name__)


def calibration_dataset(version: ModelVersion) -> Path | None:
    """The folder the version was trained on when it is here, else the first configured dataset."""
    candidates = [version.metadata.get("training", {}).get("dataset"), *settings.TRAINING_DATASETS]
    for c in filter(None, candidates):
        if (Path(c) / "labels.csv").is_file() or (Path(c) / "benign").is_dir():
            return Path(c)
    return None


def build(version: ModelVersion) -> dict:
    """Build (or reuse) the artefacts and store the report on the version; returns the report."""
    report = fastpath.read_report(version.path)
    if report is None or report.get("model_version") != version.version:
        data = calibration_dataset(version)
        if data is None:
            report = {"chosen": "torch", "error": "no training images here to calibrate int8 on "
                      "(set TRAINING_DATASETS); workers use PyTorch fp32"}
        else:
            try:
                inputs = fastpath.inputs_from_dataset(version.path, data, settings.FAST_PATH_CALIBRATION_IMAGES)
                report = fastpath.build_artefacts(version.path, inputs)
            except (ModelFileError, DatasetError, fastpath.FastPathError, OSError, RuntimeError) as exc:
                log.exception("building the fast path of %s failed", version.version)
                report = {"chosen": "torch", "error": f"{type(exc).__name__}: {exc}"}
    ModelVersion.objects.filter(pk=version.pk).update(fast_path=report)
    version.fast_path = report
    return report
