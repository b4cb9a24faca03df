#!/usr/bin/env python3
"""A small transport copy of a dataset folder for a GPU host that cannot read it (no shared disk,
a size limit on what travels): every image re-encoded as WebP at the given quality, under the SAME
file name, so the lesion-grouped split and the data fingerprints recorded in a model file match the
original dataset's; labels.csv, lesion_ids.csv and README.md copied as they are.

    python3 docker/gpu-pack-dataset.py ../shared/datasets/isic-derm-dev .gpudata/isic-derm-dev \
        [--quality 75] [--source-quality isic2017=85]

(isic-derm-dev, 6,588 images of 256 px: 71 MiB as JPEG; as WebP about 22 MiB at quality 75, 38 at 85,
52 at 90; with the ISIC 2017 part, the headline's, at 85 and the rest at 75: 25.3 MiB.) Training on
the copy sees its compression artefacts (classifier.training.train --jpeg-quality keeps the network from
learning them); measure the resulting model on the original images.

With the repository (34 MiB) the device tool refused that folder (26.5 MiB in 6,588 files) as over
its 64 MiB limit; one archive of it (25.5 MiB) travelled:
`tar czf .gpudata/isic.tgz -C DST_PARENT isic-derm-dev`, unpacked at the start of the call with
`tar xzf .gpudata/isic.tgz -C .gpudata`.
"""

import argparse
import csv
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
    p.add_argument("--source-quality", action="append", default=[], metavar="SOURCE=Q",
                   help="another quality for the images of one source (labels.csv's source column; repeatable)")
    args = p.parse_args(argv)
    if not (args.src / "labels.csv").is_file():
        print(f"error: {args.src} has no labels.csv", file=sys.stderr)
        return 2
    try:
        by_source = {name: int(q) for name, _, q in (item.partition("=") for item in args.source_quality)}
    except ValueError:
        print(f"error: --source-quality {args.source_quality}: expected SOURCE=QUALITY", file=sys.stderr)
        return 2
    with open(args.src / "labels.csv", newline="") as f:
        source_of = {args.src / row["image"]: (row.get("source") or "") for row in csv.DictReader(f)}
    args.dst.mkdir(parents=True, exist_ok=True)
    for name in ("labels.csv", "lesion_ids.csv", "README.md"):
        if (args.src / name).is_file():
            shutil.copy(args.src / name, args.dst / name)
    images = sorted(p for p in (args.src / "images").rglob("*") if p.is_file())
    with ProcessPoolExecutor() as pool:
        qualities = [by_source.get(source_of.get(path, ""), args.quality) for path in images]
        total = sum(pool.map(partial(reencode, args.src, args.dst), qualities, images, chunksize=64))
    print(f"{len(images)} images, {total / 2**20:.1f} MiB in {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
