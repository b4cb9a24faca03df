"""A model version's fast CPU artefacts (classifier.training.fastpath): asking for the build once, and building.

The report is one file, written by the build beside the model file (``<name>.fast.json``, read by
``ModelVersion.fast_report`` and by workers, through classifier.artefacts). ``ModelVersion.fast_path``
holds only where the build stands: ``{}`` never asked for, ``{"building_since": time}``,
``{"built": time}`` or ``{"error": reason}``. Publishing asks for the build (tasks.request_fast_path);
so does the registry's periodic sweep, for a published version that was never asked for or whose
request got lost. Workers only load what is there.
"""

import logging
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from classifier import artefacts
from skinweb.models_registry.models import ModelVersion

log = logging.getLogger(__name__)

# A request older than this with no result lost its message or its worker: it may be asked for again.
STALE_REQUEST = timedelta(minutes=30)


def claim(version: ModelVersion) -> bool:
    """Mark the build of ``version`` asked for; True when this call did (its caller sends the task)."""
    now = timezone.now()
    stale = (now - STALE_REQUEST).isoformat()
    return bool(ModelVersion.objects.filter(
        Q(fast_path={}) | Q(fast_path__building_since__lt=stale), pk=version.pk
    ).update(fast_path={"building_since": now.isoformat()}))


def release(version_id: int) -> None:
    """The request could not be sent: leave it to be asked for again."""
    ModelVersion.objects.filter(pk=version_id).update(fast_path={})


def calibration_dataset(version: ModelVersion) -> Path | None:
    """The folder the version was trained on when it is here (its whole validation split guards the
    int8 copy), else the first configured dataset, else the check set shipped with the code
    (classifier/checkset: 128 calibration and 256 check images, so a fresh clone builds it too)."""
    candidates = [version.metadata.get("training", {}).get("dataset"), *settings.TRAINING_DATASETS,
                  settings.FAST_PATH_CHECKSET]
    for c in filter(None, candidates):
        if (Path(c) / "labels.csv").is_file() or (Path(c) / "benign").is_dir():
            return Path(c)
    return None


def build(version: ModelVersion) -> dict | None:
    """Build (or reuse) the artefacts and record the outcome on the version; returns the report."""
    report = version.fast_report
    error = ""
    if report is None:
        data = calibration_dataset(version)
        if data is None:
            error = ("no images here to calibrate int8 on (set TRAINING_DATASETS or FAST_PATH_CHECKSET); "
                     "workers use PyTorch fp32")
        else:
            # In a child process: export and quantisation need a gigabyte or more for a moment, and a
            # worker process keeps its peak; the worker itself stays at its inference footprint.
            result = subprocess.run(
                [sys.executable, "-m", "classifier.training.fastpath", "--model", str(version.path),
                 "--data", str(data), "--calibration-images", str(settings.FAST_PATH_CALIBRATION_IMAGES)],
                capture_output=True, text=True, cwd=settings.BASE_DIR,
            )
            report = artefacts.read_report(version.path) if result.returncode == 0 else None
            if report is None:
                log.error("building the fast path of %s failed:\n%s", version.version, result.stderr[-3000:])
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                error = f"the build failed ({last}); workers use PyTorch fp32"
    state = {"built": report["created"]} if report else {"error": error}
    ModelVersion.objects.filter(pk=version.pk).update(fast_path=state)
    version.fast_path = state
    version.__dict__.pop("fast_report", None)
    return report
