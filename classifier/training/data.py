"""Datasets in two layouts, lesion-grouped splits, and an in-memory image cache for training.

Layout (a): a folder with labels.csv having at least the columns ``image`` (path relative to the
folder) and ``label`` (benign | malignant); extra columns are ignored. A ``lesion_id`` column, or
a lesion_ids.csv beside it (isic_id,lesion_id), groups images of one lesion.
Layout (b): an ImageFolder tree, ``benign/`` and ``malignant/``.
"""

import csv
import dataclasses
import hashlib
import random
import re
from pathlib import Path

from PIL import Image

CLASSES = ("benign", "malignant")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class DatasetError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = malignant
    group: str  # lesion id, or the image itself when unknown
    split: str = ""  # "train" or "val" when labels.csv fixes it, else "" (split_samples decides)
    source: str = ""  # the part of the dataset it came from (labels.csv's ``source``), for per-source figures
    diagnosis: str = ""  # the finer diagnosis (labels.csv's ``diagnosis``), for per-diagnosis figures


def load_samples(root) -> list[Sample]:
    root = Path(root)
    if (root / "labels.csv").is_file():
        return _read_labels_csv(root)
    if any((root / c).is_dir() for c in CLASSES):
        return _read_image_folder(root)
    raise DatasetError(f"{root}: expected labels.csv (columns image,label) or benign/ and malignant/ folders")


def _read_labels_csv(root: Path) -> list[Sample]:
    lesions = {}
    if (root / "lesion_ids.csv").is_file():
        with open(root / "lesion_ids.csv", newline="") as f:
            lesions = {row["isic_id"]: row["lesion_id"] for row in csv.DictReader(f) if row.get("lesion_id")}
    samples = []
    with open(root / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{root / 'labels.csv'} lacks the column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            label = row["label"].strip().lower()
            if label not in CLASSES:
                raise DatasetError(f"labels.csv line {line}: label {row['label']!r} is not benign or malignant")
            path = root / row["image"]
            key = row.get("isic_id") or Path(row["image"]).stem
            group = row.get("lesion_id") or lesions.get(key) or f"image:{row['image']}"
            split = (row.get("split") or "").strip().lower()
            if split not in ("", "train", "val"):
                raise DatasetError(f"labels.csv line {line}: split {row['split']!r} is not train or val")
            samples.append(Sample(path, CLASSES.index(label), group, split, (row.get("source") or "").strip(),
                                  (row.get("diagnosis") or "").strip().lower()))
    return samples


def _read_image_folder(root: Path) -> list[Sample]:
    samples = []
    for label, name in enumerate(CLASSES):
        folder = root / name
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    samples.append(Sample(path, label, f"image:{path.relative_to(root)}"))
    return samples


def split_samples(samples, val_fraction=0.2, seed=0, train_only_sources=()):
    """Training and validation samples: a ``split`` column in labels.csv decides where it is given
    (retraining keeps the base dataset's validation images fixed that way), sources named in
    ``train_only_sources`` go to training whole (a part without lesion ids, whose images of one
    lesion could otherwise fall on both sides); the rest is split by lesion with split_by_group."""
    fixed_train = [s for s in samples if s.split == "train" or (not s.split and s.source in train_only_sources)]
    fixed_val = [s for s in samples if s.split == "val"]
    rest = [s for s in samples if not s.split and s.source not in train_only_sources]
    train, val = split_by_group(rest, val_fraction, seed)
    return fixed_train + train, fixed_val + val


def split_as_recorded(samples, recipe: dict):
    """The training and validation split a model's recorded recipe (its ``training.recipe``
    metadata) made of ``samples``: the same fraction, seed and training-only sources. A recipe with
    ``locked_test`` (every model trained since the locked split exists) had the locked test split
    taken out of both sides: its validation images are what chose its epochs, calibration,
    threshold and band, and the locked images chose nothing (``locked_test_split``)."""
    train, val = split_samples(samples, recipe.get("val_fraction", 0.2), recipe.get("seed", 0),
                               tuple(recipe.get("train_only_sources", ())))
    if recipe.get("locked_test"):
        locked = {s.path for s in locked_test_split(samples)}
        train, val = [s for s in train if s.path not in locked], [s for s in val if s.path not in locked]
    return train, val


# The locked test split: drawn once, by this salt, and never used for any choice (issue 30).
LOCKED_SALT = "skinweb-locked-test-1"
LOCKED_FROM = {"val_fraction": 0.2, "seed": 0, "train_only_sources": ("isic2018test600",)}
LOCKED_SHARE = 0.5


def locked_test_split(samples) -> list[Sample]:
    """The development set's locked test split: half the lesions of the validation side of the
    default recipe's split (``LOCKED_FROM``, the split the shipped starter was trained on), drawn by
    lesion within each (source, label) stratum by a hash of the lesion id, so it needs no seed and
    a lesion's images stay together. Every source with lesions on the validation side is in it
    (isic2018test600 goes to training whole: it has no lesion ids). A model is scored on it once
    (``classifier.training.evaluate --split locked-test``, which keeps a ledger); training with
    ``--locked-test`` leaves it out of training and validation alike. Images in a labels.csv with a
    fixed ``split`` column (the check set, in-app retraining) have no locked split: [] for those."""
    if any(s.split for s in samples):
        return []
    _, val = split_samples(samples, LOCKED_FROM["val_fraction"], LOCKED_FROM["seed"],
                           LOCKED_FROM["train_only_sources"])
    groups: dict[str, list[Sample]] = {}
    for s in val:
        groups.setdefault(s.group, []).append(s)
    locked = []
    strata = sorted({(members[0].source, max(m.label for m in members)) for members in groups.values()})
    for source, label in strata:
        keys = sorted((g for g, members in groups.items()
                       if members[0].source == source and max(m.label for m in members) == label),
                      key=lambda g: hashlib.sha256(f"{LOCKED_SALT}:{g}".encode()).hexdigest())
        target = LOCKED_SHARE * sum(len(groups[k]) for k in keys)
        taken = 0
        for k in keys:
            if taken >= target:
                break
            locked.extend(groups[k])
            taken += len(groups[k])
    return sorted(locked, key=lambda s: str(s.path))


def split_by_group(samples, val_fraction=0.2, seed=0):
    """Stratified split that keeps every image of one lesion on the same side.

    Strata are (source, label): a lesion counts as malignant if any of its images is, and belongs
    to the source of its first image. Each stratum's lesions are shuffled with ``seed`` and the
    first ``val_fraction`` of them (by image count) go to validation, so every source keeps its
    share on both sides.
    """
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    rng = random.Random(seed)
    train, val = [], []
    strata = sorted({(members[0].source, max(m.label for m in members)) for members in groups.values()})
    for source, label in strata:
        keys = sorted(g for g, members in groups.items()
                      if members[0].source == source and max(m.label for m in members) == label)
        rng.shuffle(keys)
        target = val_fraction * sum(len(groups[k]) for k in keys)
        taken = 0
        for k in keys:
            if taken < target:
                val.extend(groups[k])
                taken += len(groups[k])
            else:
                train.extend(groups[k])
    return train, val


def collection(sample: Sample) -> str:
    """The collection an image came from, as far as the dataset tells: its source, its ISIC id's
    thousand-block (ISIC numbered images as collections arrived, so a block is mostly one clinic's
    batch: in the ISIC 2017 part the melanoma share runs from 0% to 42% between blocks) and its
    lesion id's prefix (``MSK4``, ``HAM``). A model can learn these instead of the lesion."""
    m = re.fullmatch(r"ISIC_(\d+)", sample.path.stem)
    block = f"{int(m.group(1)) // 1000}k" if m else "-"
    prefix = "" if sample.group.startswith("image:") else sample.group.split("_")[0]
    return f"{sample.source}/{block}/{prefix}"


def collection_balance(samples, prior_images=20.0) -> list[float]:
    """A sampling weight per sample under which the label no longer tells the collection: each
    (collection, label) cell is weighted by p(label) / p(label | collection), the in-collection share
    shrunk toward the overall one by ``prior_images`` pseudo-images (a block of 3 images does not
    get a weight of 30). The weights average 1 over the samples' label mix."""
    n = len(samples)
    pos = sum(s.label for s in samples) / n if n else 0.0
    share = {1: pos, 0: 1.0 - pos}
    keys = [collection(s) for s in samples]
    counts: dict[str, list[int]] = {}
    for s, key in zip(samples, keys):
        counts.setdefault(key, [0, 0])[s.label] += 1
    weights = []
    for s, key in zip(samples, keys):
        c = counts[key]
        within = (c[s.label] + prior_images * share[s.label]) / (c[0] + c[1] + prior_images)
        weights.append(share[s.label] / within)
    return weights


def fingerprint(samples) -> dict:
    """Counts and a hash of (image, label) pairs: identifies the data a model was trained on."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        h.update(f"{s.path.name},{s.label}\n".encode())
    return {
        "n": len(samples),
        "n_malignant": sum(s.label for s in samples),
        "n_lesions": len({s.group for s in samples}),
        "labels_sha256": h.hexdigest(),
    }


def jpeg_quality_range(text: str) -> tuple[int, int] | None:
    """The JPEG re-encoding range of a training recipe: "LO,HI" or one quality, each 1..100, LO <= HI;
    None for an empty string. ValueError otherwise. (classifier.training.train's --jpeg-quality and the web
    app's RETRAIN_JPEG_QUALITY setting both take it; the web process imports no PyTorch.)"""
    text = text.strip()
    if not text:
        return None
    try:
        values = [int(q) for q in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(1 <= q <= 100 for q in values) or values[0] > values[-1]:
        raise ValueError(f"{text!r}: expected LO,HI (or one quality) between 1 and 100, LO <= HI")
    return values[0], values[-1]


def load_rgb(path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")
