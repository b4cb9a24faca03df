"""Train the benign/malignant VGG16 classifier.

    python -m classifier.training.train --data DIR --out DIR [--epochs N] [--image-size PX]
        [--pretrained imagenet|none] [--device auto|cpu|cuda] [--resume]

DIR is a dataset folder (labels.csv, or benign/ and malignant/). The split into training and
validation keeps all images of one lesion together. Every epoch writes ``checkpoint.pt`` (resume
with --resume after a kill) and a line of ``metrics.jsonl``; the best epoch by the headline AUC
(melanoma vs nevus + seborrheic keratosis on the ISIC 2017 part; the pooled AUC on data without
it) is exported as ``model.safetensors`` with what classifier.training.validation makes of its validation
split: test-time averaging when single views flip, calibration, the threshold for
--target-sensitivity with its borderline band, figures per source and diagnosis.
"""

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from classifier.modelfile import (
    ModelFileError,
    ModelMetadata,
    load_model_file,
    read_metadata,
    replace_metadata,
    save_model_file,
)
from classifier.predictor import resolve_device
from classifier.presets import (
    DIHEDRAL_VIEWS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationPresetEval,
    ClassificationPresetTrain,
    dihedral,
)
from classifier.reference import CLASSES as LESION_CLASSES
from classifier.reference import differential_class
from classifier.training import metrics, validation
from classifier.training.builder import PretrainedWeightsUnavailable, build_model
from classifier.training.data import (
    DatasetError,
    collection_balance,
    fingerprint,
    jpeg_quality_range,
    load_rgb,
    load_samples,
    split_as_recorded,
)

log = logging.getLogger("classifier.training.train")


def add_split_arguments(p):
    """The options that make the training/validation split (load_split reads them; train and finetune share them)."""
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--train-only-sources", default="isic2018test600",
                   help="comma-separated sources kept whole in training (no lesion ids to split them by)")
    p.add_argument("--locked-test", action="store_true",
                   help="leave the development set's locked test split out of training and validation "
                        "(classifier.training.data.locked_test_split); recorded in the recipe")


def add_sampling_arguments(p):
    """How training images are drawn (sampling_weights reads them; train and finetune share them)."""
    p.add_argument("--source-weight", action="append", default=[], metavar="SOURCE=W",
                   help="sample SOURCE's training images W times as often (repeatable)")
    p.add_argument("--balance-collections", action="store_true",
                   help="sample so that the label does not tell the collection an image came from "
                        "(classifier.training.data.collection_balance); combines with --source-weight")


def sampling_weights(args, samples) -> np.ndarray | None:
    """Each training sample's relative chance of being drawn, from ``--source-weight`` and
    ``--balance-collections``; None when neither is given (a plain shuffle)."""
    weights = parse_weights(args.source_weight)
    if not weights and not args.balance_collections:
        return None
    w = np.array([weights.get(s.source, 1.0) for s in samples])
    return w * np.array(collection_balance(samples)) if args.balance_collections else w


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Train the skinweb VGG16 classifier.", add_help=add_help)
    p.add_argument("--data", help="dataset folder (labels.csv, or benign/ and malignant/); not needed with --resume")
    p.add_argument("--out", required=True, help="output folder: checkpoint, metrics, model file")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--image-size", type=int, default=96, help="input size in pixels (square)")
    p.add_argument("--pretrained", choices=["imagenet", "none"], default="none")
    p.add_argument("--init", metavar="MODEL", help="start from this model file's weights (fine-tuning, retraining)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--arch", choices=["vgg16_bn", "vgg16"], default="vgg16_bn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the linear head")
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--ema-decay", type=float, default=0.998, help="weight averaging per step; 0 turns it off")
    add_split_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the training/validation split (and of training, "
                   "unless --train-seed is given)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="seed of initialisation, sampling and augmentation alone: runs that differ only in it "
                   "share one split (for weight averaging, classifier.training.soup)")
    p.add_argument("--jpeg-quality", default="", metavar="LO,HI",
                   help="re-encode training views as JPEG at a quality drawn from LO..HI (see --jpeg-p): the "
                   "network cannot learn one codec's artefacts, e.g. of a WebP transport copy")
    p.add_argument("--jpeg-p", type=float, default=0.5, help="share of training views re-encoded (--jpeg-quality)")
    p.add_argument("--aux-diagnosis", type=float, default=0.0, metavar="WEIGHT",
                   help="add the lesion class (labels.csv's diagnosis column, as the differential's 7 classes) as a "
                   "second training target: a linear head on the same pooled features, class-weighted cross-entropy "
                   "times WEIGHT; used in training only, the model file keeps the one malignant logit (0: off)")
    p.add_argument("--colour-constancy", type=float, default=None, metavar="P",
                   help="shades-of-grey colour constancy with Minkowski norm P inside the network (P = 6 is "
                   "common for dermoscopy; a property of the model file, applied by every runtime); 0: off. "
                   "Default: as the --init model, else off")
    p.add_argument("--colour-jitter", type=float, default=0.1, metavar="S",
                   help="training views' random brightness, contrast and saturation change (each up to S; "
                   "hue up to S/10)")
    p.add_argument("--target-sensitivity", type=float, default=0.90)
    p.add_argument("--patience", type=int, default=12, help="stop after this many epochs without a better AUC")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading processes for augmentation (0: in the training process; use several on a GPU)")
    p.add_argument("--time-budget", type=float, default=0, metavar="SECONDS",
                   help="fit the schedule to this much training time: after the first epoch, the number of "
                   "epochs becomes what fits (at most --epochs); 0: no budget")
    p.add_argument("--version", default="", help="model version id (default: derived from date and weights)")
    # A long run on a CPU: stopped and resumed many times, at low priority, cheaper epochs.
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="also write the checkpoint inside an epoch after this many minutes (weights, optimiser, "
                   "schedule, EMA, the sampler's position and the random state), so --resume loses at most this")
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N (19: lowest)")
    p.add_argument("--freeze-blocks", type=int, default=0, choices=range(0, 5), metavar="N",
                   help="keep the first N of VGG16's 5 convolution blocks as they start (not trained)")
    p.add_argument("--progressive-from", type=int, default=0, metavar="PX",
                   help="progressive resizing: train the first epochs at smaller crops, from PX up to --image-size "
                   "by the end of --progressive-epochs (0: off)")
    p.add_argument("--progressive-epochs", type=int, default=0,
                   help="epochs over which the crop grows to --image-size (default: half the run)")
    p.add_argument("--consistency", type=float, default=0.0, metavar="W",
                   help="rotation consistency: a quarter of each batch is run again in another of the 8 "
                   "rotations/mirror images and W x the squared logit difference is added, so that one view "
                   "decides as the 8-view average does (0: off)")
    p.add_argument("--benchmark-steps", type=int, default=0, metavar="N",
                   help="measure only: train N steps (after one warm-up step), print images per second, write "
                   "nothing")
    return p


# What --resume takes from the command line; everything else comes from the run's own args.json.
RESUME_OVERRIDES = ("resume", "threads", "nice", "checkpoint_minutes", "device", "workers", "benchmark_steps")



class CachedImages(torch.utils.data.Dataset):
    """Images decoded once and kept in memory as uint8 tensors of ``size`` x ``size``.

    Squashed to a square, as the evaluation preset does. Decoding JPEGs every epoch would cost
    as much CPU time as a small model's forward pass. With ``diagnoses`` (one class index per
    image, IGNORE where unknown) an item is (image, label, diagnosis).
    """

    def __init__(self, samples, size: int, transform=None, diagnoses=None):
        from torchvision.transforms import v2 as T  # training only; inference never imports torchvision

        resize = T.Compose([T.ToImage(), T.Resize((size, size), antialias=True)])
        self.images = torch.stack([resize(load_rgb(s.path)) for s in samples])
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.float32)
        self.diagnoses = None if diagnoses is None else torch.tensor(diagnoses, dtype=torch.long)
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        img = self.transform(img) if self.transform else img
        if self.diagnoses is None:
            return img, self.labels[i]
        return img, self.labels[i], self.diagnoses[i]


IGNORE = -100  # cross_entropy's ignore_index: an image without a diagnosis adds nothing to the auxiliary loss


def diagnosis_targets(samples):
    """(class names, one index per sample) for a diagnosis target: the differential's lesion classes
    (classifier.reference.CLASSES, so a head trained on them is a differential head), IGNORE for a
    sample whose diagnosis maps to none of them."""
    names = list(LESION_CLASSES)
    return names, [names.index(c) if (c := differential_class(s.diagnosis)) else IGNORE for s in samples]


def class_weights(targets, sample_weights=None) -> torch.Tensor:
    """Cross-entropy weights of the lesion classes: the inverse of each class's share of the targets
    (under the sampling weights, if any), scaled so that a training image's weight averages 1, 0 for a
    class absent: the rare classes count as the differential's own fit weights them."""
    targets = np.asarray(targets)
    w = np.ones(len(targets)) if sample_weights is None else np.asarray(sample_weights, float)
    known = targets != IGNORE
    mass = np.bincount(targets[known], weights=w[known], minlength=len(LESION_CLASSES))
    present = mass > 0
    out = np.where(present, mass.sum() / np.maximum(mass, 1e-12) / max(int(present.sum()), 1), 0.0)
    return torch.tensor(out, dtype=torch.float32)


class AuxiliaryLoss:
    """``weight`` x cross-entropy (classes weighted by ``class_weight``) of a linear diagnosis head on the
    classifier's pooled features.

    The head exists in training only: it shapes the shared features (melanoma against nevus is one
    of its distinctions, which the benign/malignant logit mixes with carcinoma against keratosis)
    and is left out of the model file; the model's differential is then fitted on those features
    (classifier.training.differential)."""

    def __init__(self, n_classes, weight, dropout, device, class_weight=None):
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, n_classes)).to(device)
        self.weight = weight
        self.class_weight = None if class_weight is None else class_weight.to(device)

    def __call__(self, pooled, diagnoses):
        return self.weight * nn.functional.cross_entropy(self.head(pooled.float()), diagnoses,
                                                         weight=self.class_weight, ignore_index=IGNORE)


class EMA:
    """Exponential moving average of the weights (BatchNorm statistics included).

    The decay ramps up from 0.1 (timm's ModelEmaV2 schedule), so the average is useful from the
    first epochs instead of remembering the random initialisation.
    """

    def __init__(self, model, decay):
        self.module = copy.deepcopy(model).eval()
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self, model):
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if v.dtype.is_floating_point:
                ema_v.lerp_(v, 1 - d)
            else:
                ema_v.copy_(v)

    def state_dict(self):
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]


def parse_weights(items) -> dict[str, float]:
    weights = {}
    for item in items:
        name, _, w = item.partition("=")
        try:
            weights[name] = float(w)
        except ValueError:
            raise SystemExit(f"--source-weight {item!r}: expected SOURCE=NUMBER") from None
    return weights


def parse_quality(text: str):
    """``--jpeg-quality``: "LO,HI" or one number, each 1..100; None for an empty string."""
    try:
        return jpeg_quality_range(text)
    except ValueError as exc:
        raise SystemExit(f"--jpeg-quality {exc}") from None


def make_loader(dataset, batch_size, shuffle, seed=0, workers=0, pin_memory=False, weights=None):
    """``weights`` (one per image): draw each epoch's images with replacement in these proportions."""
    g = torch.Generator().manual_seed(seed)
    sampler = None
    if weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(weights), replacement=True, generator=g)
        shuffle = False
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g, sampler=sampler,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory)


class EpochOrder(torch.utils.data.Sampler):
    """The order of one epoch's training images, a function of (seed, epoch) alone: a shuffle, or a draw
    with replacement in proportion to ``weights``. ``set_epoch(epoch, start)`` skips the first ``start``
    images of that order, so a run stopped inside an epoch resumes with the very images it had left."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.weights = n, seed, weights
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            return torch.randperm(self.n, generator=g).tolist()
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()

    def __iter__(self):
        return iter(self.order()[self.start:])

    def __len__(self):
        return self.n - self.start


def freeze_blocks(model, n: int) -> list[str]:
    """Stop training the first ``n`` convolution blocks of the trunk (a block ends at a max pooling);
    return the parameters' names."""
    frozen, block = [], 0
    for index, layer in enumerate(model.features):
        if block >= n:
            break
        for name, param in layer.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"features.{index}.{name}")
        if isinstance(layer, nn.MaxPool2d):
            block += 1
    return frozen


def crop_size(args, epoch: int) -> int:
    """The training crop of ``epoch`` (0-based): --image-size, or under progressive resizing a size growing
    linearly from --progressive-from to it over --progressive-epochs, in steps of 32 px."""
    if not args.progressive_from or args.progressive_from >= args.image_size:
        return args.image_size
    span = args.progressive_epochs or max(1, args.epochs // 2)
    if epoch >= span:
        return args.image_size
    size = args.progressive_from + (args.image_size - args.progressive_from) * epoch / span
    return min(args.image_size, max(32, int(round(size / 32)) * 32))


class Consistency:
    """W x the mean squared difference between each image's logit and its logit in another of the 8
    rotations/mirror images, on a quarter of the batch (a random view per step, from the global RNG so
    that a resumed run draws the same): one view learns to decide as the others do."""

    def __init__(self, weight: float, share: float = 0.25):
        self.weight, self.share = weight, share

    def turned_views(self, images):
        m = max(1, int(len(images) * self.share))
        k = int(torch.randint(1, DIHEDRAL_VIEWS, (1,)))
        return dihedral(images[:m], k).contiguous(memory_format=torch.channels_last), m

    def __call__(self, logits, turned, m):
        return self.weight * (logits[:m].float() - turned.float()).pow(2).mean()


def train_one_epoch(model, loader, optimizer, scheduler, criterion, device, ema=None, progress=None, aux=None,
                    consistency=None, on_step=None, running=(0.0, 0)):
    """One pass over the loader; ``aux`` (an AuxiliaryLoss) adds the diagnosis loss, its loader
    then yielding (images, labels, diagnoses); ``consistency`` (a Consistency) the rotation term.
    ``on_step(loss total, images)`` is called after each step (the mid-epoch checkpoint); ``running``:
    the loss total and image count of the part of the epoch done before a resume."""
    model.train()
    if aux is not None:
        aux.head.train()
    total, n = running
    for images, labels, *diagnoses in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        batch, m = images, 0
        if consistency is not None:
            turned, m = consistency.turned_views(images)
            batch = torch.cat([images, turned])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if aux is None:
                logits = model(batch)
            else:
                logits, pooled = model.forward_with_features(batch)
        main = logits[:len(labels)]
        loss = criterion(main.float(), labels)
        if aux is not None:
            loss = loss + aux(pooled[:len(labels)], diagnoses[0].to(device, non_blocking=True))
        if consistency is not None:
            loss = loss + consistency(main, logits[len(labels):], m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        total += loss.item() * len(labels)
        n += len(labels)
        if progress is not None:
            progress.update(len(labels))
            progress.set_postfix(loss=f"{total / n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if on_step is not None:
            on_step(total, n)
    return total / max(n, 1)


@torch.inference_mode()
def view_logits(model, loader, device) -> np.ndarray:
    """(n, 8) logits: every image of the loader in each of the 8 rotations/mirror images."""
    model.eval()
    out = []
    for images, _ in loader:
        images = images.to(device)
        views = []
        for k in range(DIHEDRAL_VIEWS):
            x = dihedral(images, k).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                views.append(model(x).float().cpu())
        out.append(torch.stack(views, dim=1).numpy())
    return np.concatenate(out)


@torch.inference_mode()
def evaluate(model, loader, criterion, device):
    """Return (mean loss, labels, probabilities) over the loader."""
    model.eval()
    total, labels_all, probs_all = 0.0, [], []
    for images, labels in loader:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images).float()
        total += criterion(logits, labels.to(device)).item() * len(labels)
        labels_all.append(labels.numpy())
        probs_all.append(torch.sigmoid(logits).cpu().numpy())
    y, p = np.concatenate(labels_all), np.concatenate(probs_all)
    return total / len(y), y, p


class WarmupCosine:
    """Linear warm-up, then cosine decay to zero at ``total_steps`` (which a time budget may shorten)."""

    def __init__(self, warmup_steps, total_steps):
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step):
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epochs_within(budget_s, first_epoch_s, wanted, done=1):
    """How many epochs fit ``budget_s`` given the first epoch's time (at least ``done``, at most ``wanted``)."""
    return max(done, min(wanted, int(budget_s // max(first_epoch_s, 1e-6))))


STOPPED = 3  # exit status when on_epoch asked to stop


def load_split(args):
    """(samples, training, validation, train-only sources) from ``--data``, ``--val-fraction``,
    ``--seed`` and ``--train-only-sources``; None, with the reason logged, when the data cannot be
    read or has too few images for both classes on both sides."""
    try:
        samples = load_samples(args.data)
    except (DatasetError, OSError) as exc:
        log.error("cannot read the dataset: %s", exc)
        return None
    train_only = tuple(s for s in args.train_only_sources.split(",") if s)
    train, val = split_as_recorded(samples, {"val_fraction": args.val_fraction, "seed": args.seed,
                                             "train_only_sources": train_only, "locked_test": args.locked_test})
    if not train or not val or len({s.label for s in val}) < 2:
        log.error("the dataset is too small to split into training and validation with both classes")
        return None
    return samples, train, val, train_only


def resume_arguments(args):
    """``--out DIR --resume`` without ``--data``: the run's own arguments (OUT/args.json), with the few that
    may change between sittings (RESUME_OVERRIDES) from the command line; one command continues a run. With
    ``--data`` the command line is the whole recipe, as for a new run (a resume then checks it fits)."""
    saved = Path(args.out) / "args.json"
    if not args.resume or args.data or not saved.is_file():
        return args
    stored = json.loads(saved.read_text())
    defaults = get_args_parser()
    given = {k: v for k, v in vars(args).items() if k in RESUME_OVERRIDES and v != defaults.get_default(k)}
    return argparse.Namespace(**{**stored, "resume": True, **given})


def write_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)  # atomic: a kill never leaves half a file


class Progress:
    """``progress.json`` beside the checkpoint: where the run stands, its speed and when it will end
    (the rate measured since this sitting started, over the steps left in the whole schedule)."""

    def __init__(self, path: Path, steps_per_epoch: int, batch_size: int, listener=None):
        self.path, self.steps_per_epoch, self.batch_size = path, steps_per_epoch, batch_size
        self.listener = listener
        self.t0, self.step0, self.last = time.perf_counter(), None, 0.0

    def update(self, epoch, epochs, step_in_epoch, loss, force=False, **extra):
        now = time.perf_counter()
        done = epoch * self.steps_per_epoch + step_in_epoch
        if self.step0 is None:
            self.step0, self.t0 = done, now
        if not force and now - self.last < 60:
            return
        self.last = now
        rate = (done - self.step0) / (now - self.t0) if now > self.t0 and done > self.step0 else 0.0
        left = epochs * self.steps_per_epoch - done
        eta = left / rate if rate else None
        record = {"epoch": epoch + 1, "epochs": epochs, "step": step_in_epoch, "steps_per_epoch": self.steps_per_epoch,
                  "train_loss": round(loss, 5) if loss is not None else None,
                  "images_per_s": round(rate * self.batch_size, 3), "eta_s": None if eta is None else round(eta),
                  "eta_at": None if eta is None else time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime(time.time() + eta)),
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        write_json(self.path, record)
        if self.listener is not None:
            self.listener(record)
        log.info("progress: epoch %d/%d, step %d/%d, %.2f images/s%s", epoch + 1, epochs, step_in_epoch,
                 self.steps_per_epoch, record["images_per_s"],
                 f", ETA {record['eta_at']}" if record["eta_at"] else "")


def main(args, on_epoch=None, on_progress=None) -> int:
    """Train; ``on_epoch(record)`` (optional) is called after each epoch's checkpoint with the
    epoch's metrics plus ``epochs`` and ``eta_s``, and stops the run when it returns False;
    ``on_progress(record)`` with progress.json's record about once a minute inside an epoch (a heartbeat)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    out = Path(args.out)
    args = resume_arguments(args)
    if not args.data:
        raise SystemExit("--data is needed (or --resume with an OUT that holds args.json)")
    out.mkdir(parents=True, exist_ok=True)
    if args.nice:
        os.nice(args.nice)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    jpeg = parse_quality(args.jpeg_quality)
    if args.colour_constancy is not None and not (args.colour_constancy == 0 or 1 <= args.colour_constancy <= 32):
        raise SystemExit(f"--colour-constancy {args.colour_constancy:g}: expected 0 (off) or a p from 1 to 32")
    if not 0 <= args.colour_jitter <= 1:
        raise SystemExit(f"--colour-jitter {args.colour_jitter:g}: expected a number from 0 to 1")
    if args.consistency < 0:
        raise SystemExit(f"--consistency {args.consistency:g}: expected 0 (off) or a positive weight")
    torch.manual_seed(train_seed)
    device = resolve_device(args.device)

    split = load_split(args)
    if split is None:
        return 2
    samples, train_samples, val_samples, train_only = split
    log.info("data: %d images; training %d (%d malignant), validation %d (%d malignant), device %s",
             len(samples), len(train_samples), sum(s.label for s in train_samples), len(val_samples),
             sum(s.label for s in val_samples), device)

    init_state, init_meta = None, None
    if args.init:
        try:
            init_state, init_meta = load_model_file(args.init)
        except ModelFileError as exc:
            log.error("cannot start from %s: %s", args.init, exc)
            return 2
    if args.colour_constancy is None:  # a retrained model keeps what its trunk was trained on
        args.colour_constancy = float(init_meta.colour_constancy) if init_meta else 0.0
    try:
        model = build_model(args.arch, pretrained=args.pretrained, dropout=args.dropout,
                            colour_constancy=args.colour_constancy)
    except PretrainedWeightsUnavailable as exc:
        log.error("%s", exc)
        return 2
    if init_state is not None:
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in init_state.items()})
        except RuntimeError as exc:
            log.error("cannot start from %s: %s", args.init, exc)
            return 2
        log.info("starting from the weights of %s", init_meta.version)
        del init_state
    if args.freeze_blocks:
        log.info("blocks 1-%d frozen: %d tensors not trained", args.freeze_blocks,
                 len(freeze_blocks(model, args.freeze_blocks)))
    model = model.to(device).to(memory_format=torch.channels_last)

    aux, diagnoses = None, None
    if args.aux_diagnosis:
        names, diagnoses = diagnosis_targets(train_samples)
        if len(set(diagnoses) - {IGNORE}) < 2:
            log.error("--aux-diagnosis needs a diagnosis column naming at least two of the lesion classes (%s) "
                      "in the training images", ", ".join(names))
            return 2
        aux = AuxiliaryLoss(len(names), args.aux_diagnosis, args.dropout, device, class_weights(diagnoses))
        log.info("auxiliary diagnosis target (weight %g): %s; %d training images without one", args.aux_diagnosis,
                 ", ".join(names), diagnoses.count(IGNORE))
    consistency = Consistency(args.consistency) if args.consistency else None

    size = args.image_size
    cache_size = round(size * 1.15)
    t0 = time.perf_counter()

    def train_preset(crop):
        return ClassificationPresetTrain(crop, jpeg=jpeg, jpeg_p=args.jpeg_p, jitter=args.colour_jitter)

    train_set = CachedImages(train_samples, cache_size, train_preset(size), diagnoses=diagnoses)
    # Validation images go through the same preset as the predictor (their resize is a no-op here).
    val_set = CachedImages(val_samples, size, ClassificationPresetEval(size))
    log.info("decoded %d images in %.0f s", len(samples), time.perf_counter() - t0)
    pin = device.type == "cuda"
    drawn = sampling_weights(args, train_samples)
    sample_w = torch.ones(len(train_samples), dtype=torch.float64) if drawn is None else torch.from_numpy(drawn)
    order = EpochOrder(len(train_set), train_seed, None if drawn is None else sample_w)
    # Its own generator: an iterator's seed drawn from the global one would shift the augmentations of a
    # resumed epoch away from those of the run that never stopped.
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=order,
                                               generator=torch.Generator().manual_seed(train_seed),
                                               num_workers=args.workers, pin_memory=pin)
    val_loader = make_loader(val_set, args.batch_size * 2, shuffle=False, pin_memory=pin)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # The malignant share as the sampler draws the images (equal to the plain share without weights).
    share = float((sample_w * train_set.labels.double()).sum() / sample_w.sum())
    pos_weight = torch.tensor((1 - share) / max(share, 1e-9), device=device)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim > 1]
    no_decay = [p for n, p in trained if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if aux is not None:
        groups.append({"params": list(aux.head.parameters()), "weight_decay": args.weight_decay})
    if args.opt == "sgd":
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    schedule = WarmupCosine(args.warmup_epochs * steps_per_epoch, args.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = EMA(model, args.ema_decay) if args.ema_decay else None

    if args.benchmark_steps:
        return benchmark(args, model, train_set, train_preset, order, optimizer, scheduler, criterion, device, ema,
                         aux, consistency)

    start_epoch, best_auc, best_epoch = 0, -1.0, -1
    in_epoch = None  # {"step", "loss_total", "n"} of an epoch stopped part-way
    export_pending = False
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if (aux is None) != ("aux_head" not in ckpt):  # the optimiser's parameter groups differ
            log.error("%s was trained %s --aux-diagnosis: resume with the same setting", ckpt_path,
                      "without" if aux is not None else "with")
            return 2
        if float(ckpt.get("colour_constancy", 0.0)) != args.colour_constancy:
            log.error("%s was trained with colour constancy %g, not %g: resume with the same setting", ckpt_path,
                      float(ckpt.get("colour_constancy", 0.0)), args.colour_constancy)
            return 2
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        if aux is not None:
            aux.head.load_state_dict(ckpt["aux_head"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, best_auc, best_epoch = ckpt["epoch"] + 1, ckpt["best_auc"], ckpt["best_epoch"]
        in_epoch = ckpt.get("in_epoch")
        export_pending = bool(ckpt.get("export_pending"))
        if args.time_budget and ckpt.get("epochs"):  # the budget fixed the schedule's length: keep it
            args.epochs = ckpt["epochs"]
            schedule.total_steps = args.epochs * steps_per_epoch
        where = f", step {in_epoch['step']} of epoch {start_epoch + 1}" if in_epoch else ""
        log.info("resumed after epoch %d%s (best validation AUC %.4f at epoch %d)", ckpt["epoch"] + 1, where,
                 best_auc, best_epoch + 1)
    elif args.resume:
        log.info("no checkpoint in %s: starting from scratch", out)
    write_json(out / "args.json", {k: v for k, v in vars(args).items()})

    recipe = {k: v for k, v in vars(args).items() if k not in ("data", "out", "resume", "version", *RESUME_OVERRIDES)}
    recipe["train_only_sources"] = list(train_only)
    if args.init:
        recipe["init"] = init_meta.version
    train_fp, val_fp = fingerprint(train_samples), fingerprint(val_samples)
    best_path = out / "best.pt"

    def save_checkpoint(epoch_done, **extra):
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch_done,
                 "best_auc": best_auc, "best_epoch": best_epoch, "epochs": args.epochs,
                 "colour_constancy": args.colour_constancy, **extra}
        if ema is not None:
            state["ema"] = ema.state_dict()
        if aux is not None:
            state["aux_head"] = aux.head.state_dict()
        torch.save(state, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(ckpt_path)  # atomic: a kill never leaves half a checkpoint

    def export_best():
        """Write model.safetensors from the best epoch's weights (best.pt) with its 8-view validation report."""
        best = build_model(args.arch, dropout=args.dropout, colour_constancy=args.colour_constancy)
        best.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
        best = best.to(device).to(memory_format=torch.channels_last)
        y = val_set.labels.numpy()
        export(best, args, y, view_logits(best, val_loader, device), val_samples, out, recipe, train_fp, val_fp,
               best_epoch)

    if export_pending and best_path.is_file():  # stopped between the best epoch's checkpoint and its export
        export_best()
        save_checkpoint(start_epoch - 1, export_pending=False)
    progress = Progress(out / "progress.json", steps_per_epoch, args.batch_size, on_progress)
    started = time.perf_counter()
    wanted_epochs, resumed_budget = args.epochs, start_epoch > 0  # a resumed run keeps its length
    for epoch in range(start_epoch, args.epochs):
        if epoch >= args.epochs:  # a time budget shortened the run
            break
        if epoch - best_epoch > args.patience and best_epoch >= 0:
            log.info("early stop: no better validation AUC for %d epochs", args.patience)
            break
        t = time.perf_counter()
        train_set.transform = train_preset(crop_size(args, epoch))
        resume_at = in_epoch if in_epoch and in_epoch.get("epoch", epoch) == epoch else None
        in_epoch = None
        first_step = resume_at["step"] if resume_at else 0
        order.set_epoch(epoch, first_step * args.batch_size)
        state = {"step": first_step, "saved": time.perf_counter()}

        def on_step(total, n, epoch=epoch, state=state):
            state["step"] += 1
            progress.update(epoch, args.epochs, state["step"], total / max(n, 1), crop=crop_size(args, epoch))
            if args.checkpoint_minutes and time.perf_counter() - state["saved"] >= 60 * args.checkpoint_minutes \
                    and state["step"] < steps_per_epoch:
                save_checkpoint(epoch - 1, in_epoch={"epoch": epoch, "step": state["step"], "loss_total": total,
                                                     "n": n})
                state["saved"] = time.perf_counter()
                log.info("checkpoint inside epoch %d at step %d/%d", epoch + 1, state["step"], steps_per_epoch)

        running = (resume_at["loss_total"], resume_at["n"]) if resume_at else (0.0, 0)
        with tqdm(total=len(train_set), initial=running[1], desc=f"epoch {epoch + 1}/{args.epochs}", unit="img",
                  file=sys.stderr, leave=False, disable=None) as bar:
            train_loss = train_one_epoch(model, train_loader, optimizer, scheduler, criterion, device, ema, bar, aux,
                                         consistency, on_step, running)
        eval_model = ema.module if ema is not None else model
        val_loss, y, p = evaluate(eval_model, val_loader, criterion, device)
        auc = metrics.roc_auc(y, p)
        headline = validation.headline_and_pooled(y, p, val_samples)["headline_auc"]
        # Chosen by the headline (ISIC 2017 melanoma vs nevus + SK); data without it by the pooled AUC.
        score = headline if np.isfinite(headline) else auc
        improved = score > best_auc
        seconds = time.perf_counter() - t
        if args.time_budget and epoch < 2 and not resumed_budget:
            # Fitted after the first epoch and again after the second: the first also pays for
            # start-up (loader processes, cuDNN's algorithm search) and can be several times slower.
            fitted = epoch + 1 + epochs_within(args.time_budget - (time.perf_counter() - started), seconds,
                                               wanted_epochs - epoch - 1, done=0)
            if fitted != args.epochs:
                log.info("time budget %.0f s at %.1f s per epoch: %d epochs instead of %d", args.time_budget,
                         seconds, fitted, args.epochs)
                args.epochs = fitted
                schedule.total_steps = args.epochs * steps_per_epoch
                write_json(out / "args.json", {k: v for k, v in vars(args).items()})
                if best_epoch >= 0 and (out / "model.safetensors").is_file():
                    restamp_epochs(out, args.epochs)  # exported before the schedule was fitted
        if improved:
            best_auc, best_epoch = score, epoch
            torch.save(eval_model.state_dict(), out / "best.tmp")
            (out / "best.tmp").replace(best_path)
            # The checkpoint first: a stop during the export (minutes of 8-view passes) resumes with it.
            save_checkpoint(epoch, export_pending=True)
            export_best()
        record = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
                  "val_auc": round(auc, 5), "val_headline_auc": round(headline, 5), "best_val_auc": round(best_auc, 5),
                  "lr": scheduler.get_last_lr()[0], "crop": crop_size(args, epoch),
                  "seconds": round(time.perf_counter() - t, 1)}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        remaining = (args.epochs - epoch - 1) * seconds
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val AUC %.4f%s, %.0f s; ETA %s",
                 epoch + 1, args.epochs, train_loss, val_loss, auc, " (best)" if improved else "", seconds,
                 time.strftime("%H:%M:%S", time.gmtime(remaining)))
        save_checkpoint(epoch)
        progress.update(epoch, args.epochs, steps_per_epoch, None, force=True, last_epoch=record)
        if on_epoch is not None and on_epoch({**record, "epochs": args.epochs, "eta_s": round(remaining)}) is False:
            log.info("stopped on request after epoch %d", epoch + 1)
            return STOPPED
    log.info("done in %.0f s; best validation AUC %.4f at epoch %d; model: %s",
             time.perf_counter() - started, best_auc, best_epoch + 1, out / "model.safetensors")
    return 0


def benchmark(args, model, train_set, train_preset, order, optimizer, scheduler, criterion, device, ema, aux,
              consistency) -> int:
    """--benchmark-steps: the training speed of this configuration (one warm-up step, then N), as one JSON line."""
    train_set.transform = train_preset(crop_size(args, 0))
    order.set_epoch(0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=order)
    steps = iter(loader)
    warm = [next(steps)]
    train_one_epoch(model, warm, optimizer, scheduler, criterion, device, ema, None, aux, consistency)
    batches = [next(steps) for _ in range(args.benchmark_steps)]
    t = time.perf_counter()
    train_one_epoch(model, batches, optimizer, scheduler, criterion, device, ema, None, aux, consistency)
    seconds = time.perf_counter() - t
    images = sum(len(b[1]) for b in batches)
    print(json.dumps({"crop": crop_size(args, 0), "freeze_blocks": args.freeze_blocks, "batch_size": args.batch_size,
                      "consistency": args.consistency, "aux_diagnosis": args.aux_diagnosis,
                      "threads": torch.get_num_threads(), "steps": args.benchmark_steps,
                      "images_per_s": round(images / seconds, 3),
                      "epoch_minutes": round(len(train_set) / (images / seconds) / 60, 1)}))
    return 0


def restamp_epochs(out, epochs):
    meta = read_metadata(out / "model.safetensors")
    meta = replace_metadata(out / "model.safetensors",
                            training={**meta.training, "recipe": {**meta.training["recipe"], "epochs": epochs}})
    (out / "model.json").write_text(json.dumps(dataclasses.asdict(meta), indent=2))


def export(model, args, y, logits_by_view, val_samples, out, recipe, train_fp, val_fp, epoch):
    """Write the model file for this epoch's weights, with what the validation split says about it
    (classifier.training.validation): test-time averaging if needed, calibration, threshold, figures."""
    report = validation.choose_and_report(y, logits_by_view, val_samples, args.target_sensitivity, n_boot=500)
    recipe = {**recipe, "epochs": args.epochs}  # the schedule's length, once a time budget has fitted it
    meta = ModelMetadata(
        version=args.version,
        arch=args.arch,
        input_size=args.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        threshold=report["threshold"],
        tta=report["tta"],
        colour_constancy=args.colour_constancy,
        calibration=report["calibration"],
        operating_point=report["operating_point"],
        cascade=report["cascade"],
        training={"dataset": str(args.data), "train": train_fp, "validation": val_fp, "recipe": recipe,
                  "epoch": epoch + 1, "target_sensitivity": args.target_sensitivity},
        metrics={"validation": report["validation"]},
    )
    meta = save_model_file(out / "model.tmp", model, meta)
    (out / "model.tmp").replace(out / "model.safetensors")
    (out / "model.json").write_text(json.dumps(dataclasses.asdict(meta), indent=2))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
