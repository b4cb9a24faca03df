"""Checks of an image before its score is trusted: too small, too dark, too bright, almost uniform,
blurred. A failed check is a warning shown with the result (page, PDF, CSV); it never blocks.

The measures are taken on the stored copy at upload (numpy and Pillow, no model). The cut-offs
are set on the ISIC development set so that real dermoscopy rarely warns:
``python -m benchmarks.image_checks --data DIR`` prints each measure's percentiles there and the
share of images that would warn (docs/benchmarks.md, "Image checks"). Whether the image shows a skin lesion at
all needs the model's features: the worker measures it with the prediction (classifier.lesioncheck,
``Prediction.unlike_lesion``) and ``Case.warnings`` adds this wording.
"""

import dataclasses
import re

import numpy as np
from django.utils.translation import gettext, gettext_noop
from PIL import Image, ImageFilter

MIN_SIDE = 224  # the model's input: smaller images are upscaled and lose detail
DARK_MEAN = 35  # mean luminance (0-255) below this: too dark
BRIGHT_MEAN = 235  # above this: overexposed
UNIFORM_STD = 5  # luminance standard deviation below this: almost uniform, no visible lesion
BLUR_EDGE = 1.2  # mean absolute Laplacian at 256 px below this: blurred
MEASURE_SIDE = 256  # the measures are taken on a copy this size (the development set's)
# Stored in English (Case.image_warnings, Case.withheld_reason: the audit trail's language) and shown in the
# reader's language by in_words().
UNLIKE_LESION = gettext_noop("does not look like a dermoscopic image of a skin lesion")
UNIFORM = gettext_noop("almost uniform: no lesion visible")
TOO_DARK, OVEREXPOSED, BLURRED = gettext_noop("too dark"), gettext_noop("overexposed"), gettext_noop("blurred")
SMALL = "small image ({side} px on its shorter side; the model reads {min_side} px)"
SMALL_PATTERN = re.compile(r"small image \((\d+) px on its shorter side; the model reads (\d+) px\)")


def in_words(warning: str) -> str:
    """A stored warning (or a withheld result's reason) in the active language."""
    small = SMALL_PATTERN.fullmatch(warning)
    if small:
        return gettext("small image (%(side)s px on its shorter side; the model reads %(min_side)s px)") % {
            "side": small[1], "min_side": small[2]}
    return "; ".join(gettext(part) for part in warning.split("; "))


def withholding(warnings) -> list[str]:
    """The warnings that mean there is no lesion to decide on (the image checks' "almost uniform", the model's
    lesion check): the result is then withheld everywhere unless a clinician asks for the score. The others
    (small, dark, overexposed, blurred) say how far to trust a result, which is shown with them."""
    return [w for w in warnings if w in (UNIFORM, UNLIKE_LESION)]


@dataclasses.dataclass
class Measures:
    min_side: int
    mean: float
    std: float
    edge: float


def measure(img: Image.Image) -> Measures:
    gray = img.convert("L")
    small = gray.resize((MEASURE_SIDE, MEASURE_SIDE), Image.Resampling.BILINEAR)
    a = np.asarray(small, dtype=np.float32)
    lap = np.asarray(small.filter(ImageFilter.Kernel((3, 3), [0, 1, 0, 1, -4, 1, 0, 1, 0], scale=1, offset=128)),
                     dtype=np.float32) - 128
    return Measures(min(img.size), float(a.mean()), float(a.std()), float(np.abs(lap[1:-1, 1:-1]).mean()))


def warnings_for(m: Measures) -> list[str]:
    out = []
    if m.min_side < MIN_SIDE:
        out.append(SMALL.format(side=m.min_side, min_side=MIN_SIDE))
    if m.mean < DARK_MEAN:
        out.append(TOO_DARK)
    elif m.mean > BRIGHT_MEAN:
        out.append(OVEREXPOSED)
    if m.std < UNIFORM_STD:
        out.append(UNIFORM)
    elif m.edge < BLUR_EDGE:
        out.append(BLURRED)
    return out


def check(img: Image.Image, original_size: tuple[int, int] | None = None) -> list[str]:
    """Warnings for an image (empty when it looks usable). ``original_size``: as uploaded, before
    the stored copy was bounded (small-image warnings are about what the camera gave)."""
    m = measure(img)
    if original_size:
        m.min_side = min(original_size)
    return warnings_for(m)
