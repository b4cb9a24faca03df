"""How often the image checks (skinweb/clinic/imagechecks.py) warn on real dermoscopy, and what they
say about images that should warn.

    python -m benchmarks.image_checks --data ../shared/datasets/isic-derm-dev [--limit 0]

Prints the percentiles of each measure on the data set, the share of its images with any warning
(the target: at most 2%), per source, and the warnings of four bad images made here: a blank beige
image, a natural non-skin scene (a synthetic sky and horizon), a heavily blurred lesion (the first
data set image, Gaussian blur radius 8) and a dark one.
"""

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skinweb.clinic import imagechecks


def bad_images(example: Image.Image) -> dict[str, Image.Image]:
    scene = Image.new("RGB", (640, 480), (120, 170, 230))
    draw = ImageDraw.Draw(scene)
    draw.rectangle((0, 300, 640, 480), fill=(70, 120, 50))
    draw.ellipse((480, 40, 560, 120), fill=(250, 240, 180))
    return {
        "blank beige": Image.new("RGB", (600, 600), (222, 200, 170)),
        "non-skin scene": scene,
        "blurred lesion": example.filter(ImageFilter.GaussianBlur(8)),
        "dark lesion": example.point(lambda v: v // 8),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with labels.csv (image, label, source columns)")
    p.add_argument("--limit", type=int, default=0, help="check only the first N images (0: all)")
    args = p.parse_args(argv)
    root = Path(args.data)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if args.limit:
        rows = rows[: args.limit]
    measures, warned, by_source, n_source = [], Counter(), Counter(), Counter()
    for r in rows:
        path = root / r.get("image", r.get("path", ""))
        with Image.open(path) as img:
            m = imagechecks.measure(img.convert("RGB"))
        measures.append(m)
        w = imagechecks.warnings_for(m)
        source = r.get("source", "")
        n_source[source] += 1
        if w:
            by_source[source] += 1
            for x in w:
                warned[x.split(" (")[0]] += 1
    print(f"{len(rows)} images of {root}")
    for name in ("min_side", "mean", "std", "edge"):
        v = np.array([getattr(m, name) for m in measures], dtype=float)
        q = np.percentile(v, [0.5, 1, 2, 50, 98, 99, 99.5])
        print(f"  {name:8s} p0.5 {q[0]:7.2f}  p1 {q[1]:7.2f}  p2 {q[2]:7.2f}  median {q[3]:7.2f}  "
              f"p98 {q[4]:7.2f}  p99 {q[5]:7.2f}  p99.5 {q[6]:7.2f}")
    total = sum(by_source.values())
    print(f"images with a warning: {total} of {len(rows)} ({total / max(len(rows), 1):.1%}); by kind: {dict(warned)}")
    for s in sorted(n_source):
        print(f"  {s or '(no source)'}: {by_source[s]} of {n_source[s]} ({by_source[s] / n_source[s]:.1%})")
    with Image.open(root / rows[0].get("image", rows[0].get("path", ""))) as img:
        example = img.convert("RGB")
    print("bad images:")
    for name, img in bad_images(example).items():
        print(f"  {name}: {imagechecks.check(img) or 'NO WARNING'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
