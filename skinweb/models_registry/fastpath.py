"""Build a model version's fast CPU artefacts (classifier.fastpath) from the data it was trained on."""

import logging
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from classifier import fastpath
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
            # In a child process: export and quantisation need a gigabyte or more for a moment, and a
            # worker process keeps its peak; the worker itself stays at its inference footprint.
            result = subprocess.run(
                [sys.executable, "-m", "classifier.fastpath", "--model", str(version.path), "--data", str(data),
                 "--calibration-images", str(settings.FAST_PATH_CALIBRATION_IMAGES)],
                capture_output=True, text=True, cwd=settings.BASE_DIR,
            )
            report = fastpath.read_report(version.path) if result.returncode == 0 else None
            if report is None:
                log.error("building the fast path of %s failed:\n%s", version.version, result.stderr[-3000:])
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                report = {"chosen": "torch", "error": f"the build failed ({last})"}
    ModelVersion.objects.filter(pk=version.pk).update(fast_path=report)
    version.fast_path = report
    return report
