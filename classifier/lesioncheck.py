"""Does an image look like the dermoscopic lesions the model learnt from? A distance in the model's
own feature space, checked with every prediction.

The model's pooled features (the 512 numbers its linear head reads) of training images are
summarised by their mean and a covariance shrunk toward its average variance; an image's
Mahalanobis distance from them above a cut-off says "does not look like a dermoscopic image of a
skin lesion". The cut-off is a high percentile (99.5th by default) of the distances of the
validation images, so about 0.5% of real lesions like those warn. A uniform picture is not far
from the average lesion in these features: the upload's "almost uniform" check catches it. The features are those of the
image as given (the first of the 8 views when the model averages them), the same at fitting and at
prediction. Mean, precision matrix and cut-off are stored in the model file (extra tensors
``lesion_check.mean`` and ``lesion_check.precision``; metadata ``lesion_check``); weights and
version stay as they were. This module is what a worker reads and applies; fitting it is a tool:

    python -m classifier.training.lesioncheck --model FILE --data DIR [--train-images 2000]
"""

import dataclasses

import torch

NAME = "lesion_check"


@dataclasses.dataclass
class LesionCheck:
    mean: torch.Tensor  # (d,)
    precision: torch.Tensor  # (d, d), the inverse of the shrunk covariance
    cutoff: float

    def distances(self, features: torch.Tensor, batch=None) -> torch.Tensor:
        """Mahalanobis distance of each row of ``features`` (n, d) from the training images."""
        d = features.float() - self.mean
        return ((d @ self.precision) * d).sum(1).clamp_min(0).sqrt()


def load(path, metadata) -> LesionCheck | None:
    """The check stored in a model file, or None for a file made without it."""
    from classifier.modelfile import read_extra

    if not metadata.lesion_check:
        return None
    tensors = read_extra(path, NAME)
    if not {"mean", "precision"} <= set(tensors):
        return None
    return LesionCheck(tensors["mean"].float(), tensors["precision"].float(), float(metadata.lesion_check["cutoff"]))
