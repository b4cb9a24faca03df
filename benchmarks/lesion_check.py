"""How well the checks that withhold a result (issue 43) tell dermoscopic lesions from other pictures.

    python -m benchmarks.lesion_check --data ../shared/datasets/isic-derm-dev [--model FILE --operating-point OP]

A result is withheld when the image is almost uniform (skinweb/clinic/imagechecks.py) or the model's lesion
check says it is not a dermoscopic lesion (the lesion gate beside the weights, classifier.lesiongate, where
there is one; else the distance check in the model file, classifier.lesioncheck; ``--distance-check`` forces
the latter). Measured here, on the published starter by default (the weights with the shipped operating
point), as the worker measures them:

- pictures that are not dermoscopic lesions, all from packages or made here (no download): scikit-image's
  sample images (photographs, faces, textures, documents, microscopy, a retina, synthetic figures), 40 of its
  LFW face crops, matplotlib's sample photographs, and synthetic ones (solid colours, gradients, noise, a text
  page, an application screenshot, skin-coloured fields with and without a spot), each as given. The target: at
  least 99% withheld. The gate was fitted on random views of these same pictures (classifier.training.lesiongate
  prints the share withheld of pictures left out of its fit): for the gate, this half is a check that it works
  as shipped.
- skin photographed without a dermatoscope: close crops of the cheeks, chin and neck of the two portraits
  (scikit-image's astronaut, matplotlib's Grace Hopper), as they are and with a drawn brown spot
  (classifier.training.lesiongate.skin_closeups). The gate's fit takes random close crops of the whole
  portraits, which can cover these regions, so here too it is a check as shipped; the fit prints the same
  crops scored by a gate fitted without their portrait. No package ships a real clinical close-up of a
  lesion: these are the nearest real pictures here. The target for clinical close-ups: at least 90% withheld.
- the model's validation images (the dermoscopic lesions the check must let through), per source. The target:
  at most 2% withheld in every source.

Prints one JSON object: the shares, per category and per source, and each non-lesion picture's verdict.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier.training.lesiongate import package_pictures, skin_closeups, synthetic_pictures
from skinweb.clinic import imagechecks


def withheld_by(predictor, images: list[Image.Image], batch_size: int = 16) -> tuple[list[bool], list[float]]:
    """(withheld, lesion-check distance) of each picture, as the upload and the worker decide them."""
    uniform = [imagechecks.UNIFORM in imagechecks.check(img) for img in images]
    distances = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([predictor.prepare(img) for img in images[start:start + batch_size]])
        with torch.inference_mode():
            features = predictor.runner.both(batch)[1]
        distances += predictor.lesion_check.distances(features, batch).tolist()
    cutoff = predictor.lesion_check.cutoff
    return [u or d > cutoff for u, d in zip(uniform, distances)], distances


def main(argv=None) -> int:
    from classifier import operatingpoint
    from classifier.modelfile import DEFAULT_MODEL_PATH
    from classifier.predictor import Predictor
    from classifier.training.data import load_samples, locked_test_split, split_as_recorded

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the development set (its validation images are the lesions)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    p.add_argument("--operating-point", default=str(operatingpoint.DEFAULT_OPERATING_POINT_PATH),
                   help="'' for the model file as it is")
    p.add_argument("--limit", type=int, default=0, help="only the first N validation images (0: all)")
    p.add_argument("--distance-check", action="store_true", help="the model file's distance check, not the gate")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model)
        if args.operating_point:
            model = operatingpoint.derive(model, args.operating_point, Path(tmp) / model.name)
        predictor = Predictor.from_file(model, device="cpu", runtime="torch")
        if args.distance_check:
            from classifier import lesioncheck

            predictor.lesion_check = lesioncheck.load(model, predictor.metadata)
    if predictor.lesion_check is None:
        print(json.dumps({"error": f"{args.model} has no lesion check"}))
        return 2
    packaged = package_pictures()
    others = {**packaged, **synthetic_pictures(), **skin_closeups(packaged)}
    flags, distances = withheld_by(predictor, [img for _, img in others.values()])
    by_category: dict[str, list[bool]] = {}
    for (category, _), flag in zip(others.values(), flags):
        by_category.setdefault(category, []).append(flag)
    samples = load_samples(args.data)
    _, val = split_as_recorded(samples, predictor.metadata.training.get("recipe", {}))
    val = val[:args.limit] if args.limit else val
    val_flags, val_distances = withheld_by(predictor, [Image.open(s.path).convert("RGB") for s in val])
    locked = {s.path for s in locked_test_split(samples)}
    per_source: dict[str, list[bool]] = {}
    for s, flag in zip(val, val_flags):
        per_source.setdefault(s.source, []).append(flag)
    share = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    print(json.dumps({
        "model": predictor.version, "check": type(predictor.lesion_check).__name__,
        "cutoff": predictor.lesion_check.cutoff,
        "non_lesion": {"n": len(flags), "withheld": int(sum(flags)), "share_withheld": share(flags),
                       "per_category": {c: {"n": len(v), "share_withheld": share(v)} for c, v in by_category.items()},
                       "let_through": {name: round(d, 1) for (name, _), f, d in zip(others.items(), flags, distances)
                                       if not f}},
        "validation": {"n": len(val_flags), "share_withheld": share(val_flags),
                       "locked_images": sum(s.path in locked for s in val),
                       "per_source": {src: {"n": len(v), "share_withheld": share(v)} for src, v in
                                      sorted(per_source.items())},
                       "distance_percentiles": {q: round(float(np.percentile(val_distances, q)), 1)
                                                for q in (50, 90, 99, 99.5)}},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
