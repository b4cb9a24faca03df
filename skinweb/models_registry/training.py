"""Retraining from the configured base datasets plus the clinic's relabelled cases.

A run is a ModelVersion row in status "training". ``run_training`` (called by the Celery task on
the ``training`` queue) builds the dataset, trains from the parent's weights with
``classifier.training.train`` (checkpoint every epoch, so a redelivered task resumes), then evaluates the
candidate and its parent on the same validation images and on the clinic's held-out cases.
"""

import csv
import json
import logging
import random
import shutil
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from classifier.modelfile import ModelFileError, file_sha256, read_metadata
from classifier.training import metrics
from classifier.training.data import CLASSES, DatasetError, fingerprint, load_samples, split_by_group
from skinweb.clinic.models import Case
from skinweb.models_registry.models import ModelVersion
from skinweb.workers import dead_on_this_host, worker_identity

log = logging.getLogger(__name__)

HELD_OUT_FRACTION = 0.25  # of the clinic's labelled lesions, kept out of training to evaluate on


class RunCancelled(Exception):
    pass


def run_dir(version: ModelVersion) -> Path:
    return settings.MODEL_ROOT / "runs" / version.version


def start_run(user, parent: ModelVersion | None = None, epochs: int | None = None) -> ModelVersion:
    """Create the run's row; the caller queues ``tasks.train_model`` (on commit)."""
    parent = parent or ModelVersion.objects.published()
    if parent is None:
        raise ValueError("There is no published model to start from.")
    mark_stale_runs()  # a run whose worker died does not block a new one until the next sweep
    if ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).exists():
        raise ValueError("A training run is already in progress; wait for it or cancel it.")
    if not settings.TRAINING_DATASETS:
        raise ValueError("No base dataset is configured (TRAINING_DATASETS).")
    name = f"{parent.arch}-retrain-{timezone.now():%Y%m%d-%H%M%S}"
    taken = set(ModelVersion.objects.filter(version__startswith=name).values_list("version", flat=True))
    name = next(n for n in (name, *(f"{name}-{i}" for i in range(2, len(taken) + 3))) if n not in taken)
    return ModelVersion.objects.create(
        version=name,
        status=ModelVersion.Status.TRAINING,
        parent=parent,
        trained_by=user,
        arch=parent.arch,
        input_size=parent.input_size,
        recipe={
            "epochs": epochs or settings.RETRAIN_EPOCHS,
            "image_size": parent.input_size,
            "arch": parent.arch,
            "lr": settings.RETRAIN_LR,
            "init": parent.version,
            "batch_size": settings.RETRAIN_BATCH_SIZE,
            "jpeg_quality": settings.RETRAIN_JPEG_QUALITY,
            "jpeg_p": settings.RETRAIN_JPEG_P,
        },
        heartbeat_at=timezone.now(),
    )


def clinic_cases():
    """Every case with a ground truth marked for training, any clinic (the admin's decision)."""
    return (Case.objects.filter(use_for_training=True).exclude(truth_label="")
            .select_related("lesion").order_by("pk"))


def split_clinic_cases(cases, seed=0):
    """Keep about HELD_OUT_FRACTION of the clinic's lesions out of training, to evaluate on."""
    by_lesion = {}
    for c in cases:
        by_lesion.setdefault(c.lesion_id, []).append(c)
    lesions = sorted(by_lesion)
    random.Random(seed).shuffle(lesions)
    n_held = round(len(lesions) * HELD_OUT_FRACTION) if len(lesions) >= 4 else 0
    held = {lesion for lesion in lesions[:n_held]}
    train_cases = [c for c in cases if c.lesion_id not in held]
    held_out = [c for c in cases if c.lesion_id in held]
    return train_cases, held_out


def build_dataset(version: ModelVersion, folder: Path) -> dict:
    """Write ``folder/labels.csv`` (absolute image paths, a fixed train/val split) and return a summary.

    The base datasets keep the validation split every version is measured on (lesion-grouped, seed
    0, as classifier.training.train makes it); clinic cases marked for training join the training side,
    except the held-out lesions, copied to ``folder/held_out/`` for the evaluation.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, bases = [], []
    for root in settings.TRAINING_DATASETS:
        samples = load_samples(root)
        train_s, val_s = split_by_group(samples, 0.2, 0)
        for split, items in (("train", train_s), ("val", val_s)):
            for s in items:
                rows.append({"image": str(s.path.resolve()), "label": CLASSES[s.label],
                             "lesion_id": f"{Path(root).name}:{s.group}", "split": split})
        bases.append({"name": Path(root).name, "path": str(root), **fingerprint(samples)})

    train_cases, held_out = split_clinic_cases(list(clinic_cases()))
    images = folder / "clinic"
    images.mkdir(exist_ok=True)
    for group, cases in (("train", train_cases), ("held_out", held_out)):
        for c in cases:
            dest = images / f"case-{c.pk}{Path(c.image.name).suffix or '.jpg'}"
            if not dest.exists():
                with default_storage.open(c.image.name, "rb") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            row = {"image": str(dest), "label": c.truth_label, "lesion_id": f"clinic-lesion:{c.lesion_id}",
                   "split": "train"}
            if group == "train":
                rows.append(row)
    write_labels(folder / "labels.csv", rows)
    held_rows = [{"image": str(images / f"case-{c.pk}{Path(c.image.name).suffix or '.jpg'}"),
                  "label": c.truth_label, "lesion_id": f"clinic-lesion:{c.lesion_id}", "split": "val"}
                 for c in held_out]
    if held_rows:
        (folder / "held_out").mkdir(exist_ok=True)
        write_labels(folder / "held_out" / "labels.csv", held_rows)
    combined = load_samples(folder)
    return {
        "base_datasets": bases,
        "clinic_cases_for_training": len(train_cases),
        "clinic_cases_held_out": len(held_out),
        "clinic_case_ids": [c.pk for c in train_cases],
        "held_out_case_ids": [c.pk for c in held_out],
        "n": len(combined),
        "n_malignant": sum(s.label for s in combined),
        "fingerprint": fingerprint(combined)["labels_sha256"],
    }


def write_labels(path: Path, rows):
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "lesion_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)  # a crash never leaves a half-written dataset that looks complete


def jsonable(obj):
    """NaN (an AUC of one class) is not JSON; PostgreSQL's jsonb refuses it. It becomes null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def owned_elsewhere(version: ModelVersion) -> bool:
    """Is another live process training this run? (A message redelivered while the first delivery
    still runs must not start a second training in the same folder.)"""
    owner = version.progress.get("worker", "")
    if not owner or owner == worker_identity() or version.heartbeat_at is None:
        return False
    if (timezone.now() - version.heartbeat_at).total_seconds() > settings.TRAINING_STALE_AFTER:
        return False
    return not dead_on_this_host(owner)


def run_training(version_id: int) -> ModelVersion:
    """Train, import the candidate and evaluate it. Safe to call again after a crash (resumes)."""
    from classifier.training import (  # in the training worker only: the web process never loads PyTorch
        lesioncheck,
        train,
    )

    version = ModelVersion.objects.get(pk=version_id)
    if version.status != ModelVersion.Status.TRAINING or owned_elsewhere(version):
        return version  # finished, failed, cancelled or running elsewhere: a duplicate delivery
    me = worker_identity()
    ModelVersion.objects.filter(pk=version.pk).update(progress={**version.progress, "worker": me},
                                                      heartbeat_at=timezone.now())
    folder = run_dir(version)
    try:
        if not (folder / "data" / "labels.csv").is_file():
            summary = build_dataset(version, folder / "data")
            ModelVersion.objects.filter(pk=version.pk).update(training_data=summary)
            version.training_data = summary
        recipe = version.recipe
        args = train.get_args_parser().parse_args([
            "--data", str(folder / "data"), "--out", str(folder / "out"), "--epochs", str(recipe["epochs"]),
            "--image-size", str(recipe["image_size"]), "--arch", recipe["arch"], "--init", str(version.parent.path),
            "--lr", str(recipe["lr"]), "--warmup-epochs", "1", "--batch-size", str(recipe["batch_size"]),
            "--patience", str(max(3, recipe["epochs"])), "--version", version.version, "--resume",
            "--device", settings.TRAINING_DEVICE,
            # A run created before the recipe had these keys resumes as it started: without.
            *(["--jpeg-quality", recipe["jpeg_quality"], "--jpeg-p", str(recipe["jpeg_p"])]
              if recipe.get("jpeg_quality") else []),
        ])

        def on_epoch(record):
            ModelVersion.objects.filter(pk=version.pk).update(progress=jsonable({**record, "worker": me}),
                                                              heartbeat_at=timezone.now())
            return not ModelVersion.objects.filter(pk=version.pk, cancel_requested=True).exists()

        def on_progress(record):  # inside an epoch, about once a minute: the run is alive, and where it stands
            ModelVersion.objects.filter(pk=version.pk).update(
                progress=jsonable({**record, "worker": me, "within_epoch": True}), heartbeat_at=timezone.now())

        ModelVersion.objects.filter(pk=version.pk).update(heartbeat_at=timezone.now())
        status = train.main(args, on_epoch=on_epoch, on_progress=on_progress)
        if status == train.STOPPED:
            raise RunCancelled()
        if status != 0 or not (folder / "out" / "model.safetensors").is_file():
            raise RuntimeError(f"training exited with status {status}; see the worker's log")
        # The new version's "does not look like a dermoscopic lesion" check, fitted on its own data.
        lesioncheck.fit_model_file(folder / "out" / "model.safetensors", folder / "data")
        finish(version, folder / "out" / "model.safetensors")
    except RunCancelled:
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED, error=CANCELLED)
    except (DatasetError, ModelFileError, OSError, RuntimeError, ValueError, KeyError) as exc:
        log.exception("training run %s failed", version.version)
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED,
                                                          error=f"{type(exc).__name__}: {exc}")
    version.refresh_from_db()
    return version


def finish(version: ModelVersion, model_path: Path):
    meta = read_metadata(model_path)
    filename = f"{version.version}.safetensors"
    settings.MODEL_ROOT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, settings.MODEL_ROOT / filename)
    version.filename = filename
    version.arch, version.input_size, version.threshold = meta.arch, meta.input_size, meta.threshold
    version.metadata = json.loads(meta.to_json())
    version.evaluation = jsonable(evaluate_against_parent(version))
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(
            filename=filename, sha256=file_sha256(settings.MODEL_ROOT / filename), arch=meta.arch,
            input_size=meta.input_size, threshold=meta.threshold, metadata=version.metadata,
            evaluation=version.evaluation, status=ModelVersion.Status.CANDIDATE, heartbeat_at=timezone.now(),
        )


def evaluate_against_parent(version: ModelVersion) -> dict:
    """Both versions on the base datasets' validation split and on the clinic's held-out cases,
    each at its own stored threshold."""
    data = run_dir(version) / "data"
    samples = load_samples(data)
    sets = {"validation": [s for s in samples if s.split == "val"]}
    if (data / "held_out" / "labels.csv").is_file():
        sets["clinic_held_out"] = load_samples(data / "held_out")
    out = {}
    for name, v in (("candidate", version), ("parent", version.parent)):
        from classifier.predictor import Predictor  # workers only (PyTorch)

        predictor = Predictor.from_file(v.path, device="cpu", runtime="torch")
        out[name] = {"version": v.version}
        for set_name, items in sets.items():
            probs = []
            for i in range(0, len(items), 32):
                probs.extend(predictor.probabilities([s.path for s in items[i:i + 32]]))
            labels = [s.label for s in items]
            out[name][set_name] = metrics.binary_metrics(labels, probs, predictor.threshold, n_boot=200)
    return out


CANCELLED = "Cancelled by an administrator."


def resumable_runs():
    """Runs that stopped without finishing (their worker died or the stack was stopped, then the sweep failed
    them) and left a checkpoint: each can continue where it stopped (``resume_run``)."""
    stopped = ModelVersion.objects.filter(status=ModelVersion.Status.FAILED).exclude(error=CANCELLED)
    return [v for v in stopped.order_by("-created_at") if (run_dir(v) / "out" / "checkpoint.pt").is_file()]


def resume_run(version: ModelVersion) -> ModelVersion:
    """Put a stopped run back in training; the caller queues ``tasks.train_model`` (on commit). The trainer
    resumes from the run's last checkpoint (at most ten minutes of work lost: train's --checkpoint-minutes)."""
    if version not in resumable_runs():
        raise ValueError(f"{version.version} cannot be resumed: it did not stop part-way with a checkpoint.")
    if ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).exists():
        raise ValueError("A training run is already in progress; wait for it or cancel it.")
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.TRAINING, error="",
                                                      heartbeat_at=timezone.now())
    version.refresh_from_db()
    return version


def mark_stale_runs() -> list[str]:
    """Runs whose worker stopped sending heartbeats (killed, machine gone) are marked failed, so
    nothing stays "training" forever; the admin can start a new run, which resumes nothing."""
    cutoff = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER)
    stale = list(ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING, heartbeat_at__lt=cutoff))
    for v in stale:
        ModelVersion.objects.filter(pk=v.pk, status=ModelVersion.Status.TRAINING).update(
            status=ModelVersion.Status.FAILED,
            error=f"No progress from the training worker for {settings.TRAINING_STALE_AFTER} s: it stopped.",
        )
    return [v.version for v in stale]


def shadow_check(candidate: ModelVersion, n: int) -> dict:
    """Run the candidate over the last ``n`` classified cases; list the decisions it would change."""
    cases = list(Case.objects.filter(status=Case.Status.DONE, prediction__isnull=False)
                 .select_related("prediction__model_version", "lesion__patient").order_by("-created_at")[:n])
    from classifier.predictor import Predictor  # workers only (PyTorch)

    predictor = Predictor.from_file(candidate.path, device="cpu")
    changed, total = [], 0
    for i in range(0, len(cases), 16):
        chunk = cases[i:i + 16]
        files = [default_storage.open(c.image.name, "rb") for c in chunk]
        try:
            probs = predictor.probabilities(files)
        finally:
            for f in files:
                f.close()
        for c, p in zip(chunk, probs):
            total += 1
            new = predictor.decide(p)
            if new != c.prediction.decision:
                changed.append({"case": c.pk, "patient": c.lesion.patient.identifier,
                                "current": c.prediction.decision, "current_probability": c.prediction.probability,
                                "current_version": c.prediction.model_version.version,
                                "candidate": new, "candidate_probability": p, "truth": c.truth_label})
    return jsonable({"n": total, "changed": changed, "at": timezone.now().isoformat()})
