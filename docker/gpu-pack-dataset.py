#!/usr/bin/env python3
"""A small transport copy of a dataset folder for a GPU host that cannot read it (no shared disk,
a size limit on what travels): every image re-encoded as WebP at the given quality, under the SAME
file name, so the lesion-grouped split and the data fingerprints recorded in a model file match the
original dataset's; labels.csv, lesion_ids.csv and README.md copied as they are.

    python3 docker/gpu-pack-dataset.py ../shared/datasets/isic-derm-dev .gpudata/isic-derm-dev [--quality 75]

(isic-derm-dev, 6,588 images of 256 px: 85 MB as JPEG, 21 MiB at quality 75.) Training on the copy
sees mild compression artefacts; measure the resulting model on the original images.
"""

import argparse
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image


def reencode(src: Path, dst: Path, quality: int, path: Path) -> int:
    out = dst / path.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as img:
        img.convert("RGB").save(out, "WEBP", quality=quality, method=6)
    return out.stat().st_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--quality", type=int, default=75)
    args = p.parse_args(argv)
    if not (args.src / "labels.csv").is_file():
        print(f"error: {args.src} has no labels.csv", file=sys.stderr)
        return 2
    args.dst.mkdir(parents=True, exist_ok=True)
    for name in ("labels.csv", "lesion_ids.csv", "README.md"):
        if (args.src / name).is_file():
            shutil.copy(args.src / name, args.dst / name)
    images = sorted(p for p in (args.src / "images").rglob("*") if p.is_file())
    with ProcessPoolExecutor() as pool:
        total = sum(pool.map(partial(reencode, args.src, args.dst, args.quality), images, chunksize=64))
    print(f"{len(images)} images, {total / 2**20:.1f} MiB in {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
