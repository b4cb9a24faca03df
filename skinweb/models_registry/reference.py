"""A model version's reference library of the development dataset (classifier.reference): asking for its
build once, and building it, with progress.

``ModelVersion.reference`` holds where the build stands: ``{}`` never asked for,
``{"building_since": time, "done": i, "total": n}``, ``{"built": time, "n": n}`` or ``{"error": reason}``;
the index itself is the file ``<version>.reference.npz`` beside the model file. Publishing asks for it once
the version's fast path is settled (built or failed: the library is embedded with the runtime workers
use), and the registry's sweep asks again for a published version whose request was lost. Until it is
built the result page says so.
"""

import logging
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from classifier import reference
from skinweb.models_registry.models import ModelVersion

log = logging.getLogger(__name__)

STALE_REQUEST = timedelta(hours=3)  # an unfinished build older than this lost its worker: asked for again
PROGRESS_EVERY = 64  # images between progress writes


def claim(version: ModelVersion) -> bool:
    """Mark the build of ``version``'s library asked for; True when this call did."""
    now = timezone.now()
    stale = (now - STALE_REQUEST).isoformat()
    return bool(ModelVersion.objects.filter(
        Q(reference={}) | Q(reference__building_since__lt=stale), pk=version.pk
    ).update(reference={"building_since": now.isoformat(), "done": 0, "total": None}))


def release(version_id: int) -> None:
    ModelVersion.objects.filter(pk=version_id).update(reference={})


def release_if_lost(version: ModelVersion) -> None:
    """A library recorded as built whose index file is gone (a restored backup, a cleaned folder) is asked
    for again by the next request."""
    if "built" in (version.reference or {}) and not reference.index_path(version.path).is_file():
        release(version.pk)
        version.reference = {}


def dataset_for(version: ModelVersion) -> Path | None:
    """The dataset the library is built from: REFERENCE_DATASET, else the folder the version was trained on
    when it is here, else the first configured training dataset; one with a labels.csv."""
    candidates = [settings.REFERENCE_DATASET, version.metadata.get("training", {}).get("dataset"),
                  *settings.TRAINING_DATASETS]
    for c in filter(None, candidates):
        if (Path(c) / "labels.csv").is_file():
            return Path(c)
    return None


def fit_differential(version: ModelVersion, samples) -> dict:
    """Fit the version's differential head on its new library (classifier.training.differential: the
    training images of its own split), unless a head fitted for this version is there already (shipped
    beside its file); {"differential": validation figures} or {"differential_error": why}."""
    from classifier import differential
    from classifier.modelfile import read_metadata
    from classifier.training.differential import fit

    try:
        existing = differential.load(version.path, version.version)
    except differential.DifferentialError:
        existing = None  # unreadable or another version's: fitted anew
    if existing is not None and existing.meta.get("validation"):  # shipped with the file, or fitted before
        report = existing.meta
    else:
        try:
            index = reference.load(reference.index_path(version.path), version.version)
            report = fit(index, samples, read_metadata(version.path), differential.head_path(version.path))
        except (reference.LibraryUnavailable, ValueError, OSError) as exc:
            log.warning("no differential head for %s: %s", version.version, exc)
            return {"differential_error": str(exc)}
    v = report["validation"]
    return {"differential": {"n_train": report["n_train"], "n_validation": v["n"],
                             "balanced_accuracy": v["balanced_accuracy"],
                             "retrieval_precision_at_8": report["retrieval_precision_at_8"]}}


def build(version: ModelVersion, predictor=None) -> dict:
    """Embed the dataset's images with ``version`` (the worker's predictor unless given) and write the
    index; records progress and the outcome on the version and returns the state."""
    from classifier.training.data import DatasetError, load_samples

    data = dataset_for(version)
    state = {}
    if data is None:
        state = {"error": "no dataset with diagnoses is configured here (set REFERENCE_DATASET or TRAINING_DATASETS)"}
    else:
        try:
            samples = load_samples(data)
            if predictor is None:
                from skinweb.clinic.classification import get_predictor

                predictor = get_predictor(version)
            last = [0]

            def progress(done, total):
                if done - last[0] >= PROGRESS_EVERY or done == total:
                    last[0] = done
                    ModelVersion.objects.filter(pk=version.pk, reference__has_key="building_since").update(
                        reference={"building_since": timezone.now().isoformat(), "done": done, "total": total})

            meta = reference.build(predictor, samples, data, reference.index_path(version.path), progress)
            state = {"built": meta["built"], "n": meta["n"], "seconds": meta["seconds"], "dataset": str(data),
                     **fit_differential(version, samples)}
        except (reference.LibraryUnavailable, DatasetError, OSError, ValueError) as exc:
            log.exception("building the reference library of %s failed", version.version)
            state = {"error": str(exc)}
    ModelVersion.objects.filter(pk=version.pk).update(reference=state)
    version.reference = state
    return state
