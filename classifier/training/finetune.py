"""Fine-tune the ImageNet VGG16 on a CPU: the early blocks frozen and cached, the later ones and the head trained.

    python -m classifier.training.finetune --data DIR --out DIR [--tune-from 5] [--views 4] [--epochs 12] [--resume]

A full fine-tune of VGG16 at 224 px costs about half a second per image on two CPU cores. Blocks
1-4 hold 90% of the network's multiply-adds, so they stay at their ImageNet weights and run once
per image and view: ``--views`` augmented views of every training image (random crop, the 8
rotations and mirror images, mild colour changes) and the 8 rotations/mirror images of every
validation image are pushed through them once (bf16 on CPUs that have it) and cached on disk.
Training then runs block 5 and the head over the cache, each epoch taking one cached view per
image. ``--tune-from 4`` freezes blocks 1-3 only (their outputs are 4x larger on disk, and an epoch
costs about 4x as much) and trains blocks 4-5 and the head. Both stages resume after a kill
(``--resume``): caching from the last finished chunk, training from the last epoch's checkpoint.

The finished model is a plain ``vgg16`` model file, usable by everything that reads one. Its
metadata carries what the validation split says about it (classifier.training.validation): test-time
averaging over the 8 views when that removes decision flips, a Platt calibration of the averaged
logit, the threshold for the target sensitivity with a borderline band around it, and figures per
source and per diagnosis with the headline, melanoma against nevus + seborrheic keratosis on the
ISIC 2017 part. A GPU host runs the whole network instead: ``classifier.training.train --pretrained imagenet``.
"""

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classifier import differential
from classifier.modelfile import ModelMetadata, save_model_file
from classifier.presets import DIHEDRAL_VIEWS, IMAGENET_MEAN, IMAGENET_STD, ClassificationPresetEval, dihedral
from classifier.reference import CLASSES as LESION_CLASSES
from classifier.training import validation
from classifier.training.builder import PretrainedWeightsUnavailable, build_model
from classifier.training.data import fingerprint, load_rgb, locked_test_split
from classifier.training.train import (
    EMA,
    IGNORE,
    WarmupCosine,
    add_sampling_arguments,
    add_split_arguments,
    class_weights,
    diagnosis_targets,
    load_split,
    sampling_weights,
)

log = logging.getLogger("classifier.training.finetune")

# vgg16.features[:FROZEN[b]] are the frozen blocks (with their max-pools) when block b is the first one trained.
FROZEN = {4: 17, 5: 24}
CHUNK = 64  # images per cached chunk: the unit of resumption


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="Fine-tune the late blocks of the ImageNet VGG16 over cached "
                                "features of the early ones (CPU recipe).", add_help=add_help)
    p.add_argument("--data", required=True, help="dataset folder (labels.csv, or benign/ and malignant/)")
    p.add_argument("--out", required=True, help="output folder: feature cache, checkpoint, metrics, model file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--tune-from", type=int, choices=sorted(FROZEN), default=5,
                   help="first VGG16 block trained; the blocks before it are frozen and cached")
    p.add_argument("--views", type=int, default=4, help="cached augmented views per training image")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--lr", type=float, default=2e-4, help="peak learning rate of the trained blocks (the head gets 10x)"
    )
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    add_split_arguments(p)
    p.add_argument("--exclude-sources", default="", help="comma-separated sources left out of training")
    add_sampling_arguments(p)
    p.add_argument("--diagnosis-weight", type=float, default=0.0,
                   help="train block 5 jointly on the differential's lesion classes, this weight on their "
                        "cross-entropy beside the malignancy loss (0: off); the diagnosis head is not part "
                        "of the model file")
    p.add_argument("--target-sensitivity", type=float, default=0.90)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-only", action="store_true", help="fill the feature cache and stop")
    p.add_argument("--resume", action="store_true", help="continue the cache and training in OUT")
    p.add_argument("--version", default="")
    return p


def _autocast():
    """bf16 on CPUs with native bf16 (AVX512-BF16/AMX: about 2.3x fp32 on this project's EPYC), else fp32."""
    fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(fast))


class TrainView:
    """One random training view of a uint8 image: crop, colour, then one of the 8 rotations/mirrors."""

    def __init__(self, size, plain: bool):
        from torchvision.transforms import v2 as T

        self.plain = plain
        self.eval = ClassificationPresetEval(size)
        self.crop = T.Compose([
            T.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25), antialias=True),
            T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.01),
        ])

    def __call__(self, img: torch.Tensor, k: int) -> torch.Tensor:
        if not self.plain:
            img = self.crop(img)
        return dihedral(self.eval(img), k)


def _to_tensor(path) -> torch.Tensor:
    return torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1).contiguous()


def fill_cache(trunk, samples, path: Path, make_view, batch_size=16):
    """Frozen-trunk features (bf16 bits in a uint16 .npy) of ``make_view(image, index)`` for every sample.

    Progress is kept per chunk in ``path.done``; a killed run continues after the last full chunk.
    """
    n = len(samples)
    done_file = path.with_suffix(".done")
    done = int(done_file.read_text()) if done_file.exists() and path.exists() else 0
    probe = ClassificationPresetEval(trunk.size)(_to_tensor(samples[0].path)).unsqueeze(0)
    with torch.inference_mode():
        shape = trunk(probe).shape[1:]
    if done and np.load(path, mmap_mode="r").shape != (n, *shape):
        raise SystemExit(f"{path} holds features of another shape than {(n, *shape)} (another --tune-from or "
                         "--image-size, or other data): remove it or use another --out")
    if done >= n:
        return
    mode = "r+" if done else "w+"
    cache = np.lib.format.open_memmap(path, mode=mode, dtype=np.uint16, shape=(n, *shape))
    t = time.perf_counter()
    for start in range(done, n, CHUNK):
        stop = min(start + CHUNK, n)
        torch.manual_seed(zlib.crc32(f"{path.name}:{start}".encode()))
        for b in range(start, stop, batch_size):
            batch = torch.stack(
                [make_view(_to_tensor(samples[i].path), i) for i in range(b, min(b + batch_size, stop))]
            )
            with torch.inference_mode(), _autocast():
                feats = trunk(batch.contiguous(memory_format=torch.channels_last)).to(torch.bfloat16)
            cache[b:b + len(batch)] = feats.contiguous().view(torch.int16).numpy().view(np.uint16)
        cache.flush()
        done_file.write_text(str(stop))
        rate = (stop - done) / (time.perf_counter() - t)
        log.info("%s: %d/%d images, %.1f img/s, %.0f min left", path.name, stop, n, rate, (n - stop) / rate / 60)
    del cache


def read_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def as_features(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rows).view(np.int16)).view(torch.bfloat16).float()  # a copy: memmaps are read-only


class Trunk(nn.Module):
    def __init__(self, features, size, tune_from=5):
        super().__init__()
        self.layers, self.size = features[:FROZEN[tune_from]], size

    def forward(self, x):
        return self.layers(x)


class Top(nn.Module):
    """The trained blocks, pooling and the head of a VGGClassifier, run on cached frozen-trunk features;
    with ``diagnoses``, a second head over the same pooled features scores that many lesion classes."""

    def __init__(self, model, tune_from=5, diagnoses=0):
        super().__init__()
        self.blocks, self.pool, self.head = model.features[FROZEN[tune_from]:], model.pool, model.head
        self.diagnosis = (nn.Sequential(nn.Flatten(), nn.Dropout(model.head[1].p), nn.Linear(512, diagnoses))
                          if diagnoses else None)

    def forward(self, x):
        return self.head(self.pool(self.blocks(x))).squeeze(1)

    def forward_both(self, x):
        pooled = self.pool(self.blocks(x))
        return self.head(pooled).squeeze(1), self.diagnosis(pooled)


@torch.inference_mode()
def top_logits(top, cache: np.ndarray, batch_size=128) -> np.ndarray:
    top.eval()
    out = []
    for b in range(0, len(cache), batch_size):
        with _autocast():
            out.append(top(as_features(cache[b:b + batch_size]).contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out).numpy()


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.diagnosis_weight < 0:
        raise SystemExit(f"--diagnosis-weight {args.diagnosis_weight:g}: expected 0 (off) or more")
    out = Path(args.out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    split = load_split(args)
    if split is None:
        return 2
    samples, train_all, val, train_only = split
    excluded = {s for s in args.exclude_sources.split(",") if s}
    log.info("data: %d images; training %d (%d malignant), validation %d (%d malignant)", len(samples),
             len(train_all), sum(s.label for s in train_all), len(val), sum(s.label for s in val))

    try:
        model = build_model("vgg16", pretrained="imagenet", dropout=args.dropout)
    except PretrainedWeightsUnavailable as exc:
        log.error("%s", exc)
        return 2
    model = model.to(memory_format=torch.channels_last)
    trunk = Trunk(model.features, args.image_size, args.tune_from).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)

    # 1. The feature cache: validation's 8 rotations/mirrors, then the training views.
    rng = np.random.default_rng(args.seed)
    dihedral_of = {v: rng.integers(0, DIHEDRAL_VIEWS, len(train_all)) for v in range(args.views)}
    ev = ClassificationPresetEval(args.image_size)
    for k in range(DIHEDRAL_VIEWS):
        fill_cache(trunk, val, out / "cache" / f"val-d{k}.npy", lambda img, i, k=k: dihedral(ev(img), k))
    for v in range(args.views):
        view = TrainView(args.image_size, plain=v == 0)
        fill_cache(trunk, train_all, out / "cache" / f"train-v{v}.npy",
                   lambda img, i, v=v, view=view: view(img, int(dihedral_of[v][i])))
    if args.cache_only:
        return 0

    # 2. Block 5 and the head over the cache.
    keep = np.array([s.source not in excluded for s in train_all])
    train_idx = np.flatnonzero(keep)
    drawn = sampling_weights(args, [train_all[i] for i in train_idx])
    resample = drawn is not None
    sample_w = np.ones(len(train_idx)) if drawn is None else drawn
    sample_w = sample_w / sample_w.sum()
    train_caches = [read_cache(out / "cache" / f"train-v{v}.npy") for v in range(args.views)]
    val_caches = [read_cache(out / "cache" / f"val-d{k}.npy") for k in range(DIHEDRAL_VIEWS)]
    y_train = np.array([s.label for s in train_all], dtype=np.float32)
    y_val = np.array([s.label for s in val])

    top = Top(model, args.tune_from, len(LESION_CLASSES) if args.diagnosis_weight else 0)
    n_pos = float((y_train[train_idx] * sample_w).sum())
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - n_pos) / max(n_pos, 1e-9)))
    if top.diagnosis is not None:
        d_train = np.array(diagnosis_targets(train_all)[1])
        if not (d_train[train_idx] != IGNORE).any():
            raise SystemExit("--diagnosis-weight: no training image has a diagnosis of the differential's classes "
                             "(labels.csv's diagnosis column)")
        diagnosis_loss = nn.CrossEntropyLoss(weight=class_weights(d_train[train_idx], sample_w), ignore_index=IGNORE)
    head_params = list(top.head.parameters()) + (list(top.diagnosis.parameters()) if top.diagnosis else [])
    groups = [
        {
            "params": [p for p in top.blocks.parameters() if p.ndim > 1],
            "weight_decay": args.weight_decay,
            "lr": args.lr,
        },
        {"params": [p for p in top.blocks.parameters() if p.ndim <= 1], "weight_decay": 0.0, "lr": args.lr},
        {"params": [p for p in head_params if p.ndim > 1], "weight_decay": args.weight_decay, "lr": args.lr * 10},
        {"params": [p for p in head_params if p.ndim <= 1], "weight_decay": 0.0, "lr": args.lr * 10},
    ]
    optimizer = torch.optim.AdamW(groups)
    steps = math.ceil(len(train_idx) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(steps, args.epochs * steps))
    ema = EMA(top, args.ema_decay)

    start_epoch, best, best_epoch = 0, -1.0, -1
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if (top.diagnosis is None) == any(k.startswith("diagnosis.") for k in ckpt["top"]):
            raise SystemExit(f"{ckpt_path} was trained {'with' if top.diagnosis is None else 'without'} "
                             "--diagnosis-weight: resume with the same setting")
        top.load_state_dict(ckpt["top"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        ema.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, best, best_epoch = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"]
        log.info("resumed after epoch %d (best selection AUC %.4f at epoch %d)", start_epoch, best, best_epoch + 1)

    recipe = {k: v for k, v in vars(args).items()
              if k not in ("data", "out", "resume", "version", "cache_only", "bootstrap", "threads")}
    trained = "block 5" if args.tune_from == 5 else f"blocks {args.tune_from}-5"
    recipe.update(method=f"frozen blocks 1-{args.tune_from - 1} (cached), {trained} + head fine-tuned",
                  train_only_sources=list(train_only))
    for epoch in range(start_epoch, args.epochs):
        t = time.perf_counter()
        erng = np.random.default_rng(args.seed * 1000 + epoch)
        order = (
            erng.choice(train_idx, size=len(train_idx), replace=True, p=sample_w)
            if resample
            else erng.permutation(train_idx)
        )
        view_of = erng.integers(0, args.views, len(order))
        top.train()
        total = 0.0
        for b in range(0, len(order), args.batch_size):
            idx, views = order[b:b + args.batch_size], view_of[b:b + args.batch_size]
            x = torch.stack([as_features(train_caches[v][i]) for i, v in zip(idx, views)])
            x = x.contiguous(memory_format=torch.channels_last)
            if top.diagnosis is None:
                with _autocast():
                    logits = top(x).float()
                loss = criterion(logits, torch.from_numpy(y_train[idx]))
            else:
                with _autocast():
                    logits, d_logits = top.forward_both(x)
                loss = criterion(logits.float(), torch.from_numpy(y_train[idx])) + args.diagnosis_weight * \
                    diagnosis_loss(d_logits.float(), torch.from_numpy(d_train[idx]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update(top)
            total += loss.item() * len(idx)
        logits = top_logits(ema.module, val_caches[0])
        figures = validation.headline_and_pooled(y_val, logits, val)
        # Chosen by the headline; data without an ISIC 2017 part (a clinic's own) by the pooled AUC.
        score = figures["headline_auc"] if np.isfinite(figures["headline_auc"]) else figures["auc"]
        improved = score > best
        if improved:
            best, best_epoch = score, epoch
            torch.save(ema.module.state_dict(), out / "best-top.tmp")
            (out / "best-top.tmp").replace(out / "best-top.pt")
        record = {"epoch": epoch + 1, "train_loss": round(total / len(order), 5), **figures,
                  "seconds": round(time.perf_counter() - t, 1)}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("epoch %d/%d: loss %.4f, headline AUC %.4f, pooled AUC %.4f%s, %.0f s", epoch + 1, args.epochs,
                 record["train_loss"], figures["headline_auc"], figures["auc"], " (best)" if improved else "",
                 record["seconds"])
        state = {"top": top.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "ema": ema.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch, "best": best,
                 "best_epoch": best_epoch}
        torch.save(state, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(ckpt_path)

    # 3. The best epoch's weights, judged on all 8 views of every validation image.
    top.load_state_dict(torch.load(out / "best-top.pt", map_location="cpu", weights_only=True))
    view_logits = np.stack([top_logits(top, c) for c in val_caches], axis=1)  # (n, 8)
    np.save(out / "val-view-logits.npy", view_logits)
    report = validation.choose_and_report(y_val, view_logits, val, args.target_sensitivity, n_boot=args.bootstrap)
    meta = ModelMetadata(
        version=args.version, arch="vgg16", input_size=args.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        threshold=report["threshold"], tta=report["tta"], calibration=report["calibration"],
        operating_point=report["operating_point"], cascade=report["cascade"],
        training={"dataset": str(args.data), "train": fingerprint([train_all[i] for i in train_idx]),
                  "validation": fingerprint(val), "recipe": recipe, "epoch": best_epoch + 1,
                  "target_sensitivity": args.target_sensitivity, "pretrained": "imagenet (torchvision vgg16, "
                  "via classifier.training.imagenet)"},
        metrics={"validation": report["validation"]},
    )
    model.eval()
    meta = save_model_file(out / "model.tmp", model, meta)
    (out / "model.tmp").replace(out / "model.safetensors")
    (out / "model.json").write_text(json.dumps(dataclasses.asdict(meta), indent=2))
    log.info("best epoch %d (selection AUC %.4f); model %s (%s)", best_epoch + 1, best, out / "model.safetensors",
             meta.version)
    if top.diagnosis is not None:
        n_locked = len(locked_test_split(samples)) if args.locked_test else 0
        report = joint_differential(top, train_caches[0], val_caches, train_idx, d_train[train_idx], val, meta.version,
                                    args.diagnosis_weight, n_locked, differential.head_path(out / "model.safetensors"))
        log.info("differential (the joint head) on validation: balanced accuracy %.4f, retrieval precision@8 %.4f",
                 report["validation"]["balanced_accuracy"], report["retrieval_precision_at_8"])
    return 0


@torch.inference_mode()
def pooled_features(top, cache: np.ndarray, rows=None, batch_size=128) -> np.ndarray:
    """The pooled features (the worker's embedding) of cached frozen-trunk features, of ``rows`` or all."""
    top.eval()
    rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
    out = []
    for b in range(0, len(rows), batch_size):
        x = as_features(cache[rows[b:b + batch_size]]).contiguous(memory_format=torch.channels_last)
        with _autocast():
            out.append(top.pool(top.blocks(x)).flatten(1).float())
    return torch.cat(out).numpy() if out else np.zeros((0, 512), np.float32)


def joint_differential(top, train_cache, val_caches, train_rows, train_classes, val, version, weight, n_locked,
                       path) -> dict:
    """Write the jointly trained diagnosis head as the model's differential head (classifier.differential:
    a linear map of the pooled features, so also of their average over views), reported on validation as
    ``classifier.training.differential`` reports a fitted one. The retrieval library is the training
    images (``train_rows`` of ``train_cache``, one cached view each, with their ``train_classes``);
    ``n_locked`` locked test images were left out of both sides."""
    from classifier.training.differential import validation_report

    linear = top.diagnosis[-1]
    w, b = linear.weight.detach().float().numpy(), linear.bias.detach().float().numpy()
    zeros, ones = np.zeros(w.shape[1], np.float32), np.ones(w.shape[1], np.float32)
    val_classes = np.array(diagnosis_targets(val)[1])
    known = val_classes != IGNORE
    x_val = np.mean([pooled_features(top, c) for c in val_caches], axis=0)[known]
    keep = train_classes != IGNORE
    x_train = pooled_features(top, train_cache, np.asarray(train_rows)[keep])
    probs = differential.Differential(w, b, zeros, ones, LESION_CLASSES, {}).probabilities(x_val)
    report = {"model_version": version, "C": None, "method": f"trained jointly with the network (weight {weight:g})",
              "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "n_train": int(keep.sum()),
              "n_locked_left_out": int(n_locked), "embedded_with": "the training caches (validation: 8 views averaged)",
              **validation_report(probs, val_classes[known], np.array([s.source for s, k in zip(val, known) if k]),
                                  x_val, x_train, train_classes[keep])}
    differential.save(path, w, b, zeros, ones, report)
    return report


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
