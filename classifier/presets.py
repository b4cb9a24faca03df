"""Image transforms, as callables in the style of torchvision's references/classification/presets.py."""

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClassificationPresetEval:
    """Resize to a square without cropping, then normalise.

    The training images (ISIC 2017, HAM10000 mirrors) were squashed to squares, not cropped, so
    squashing at inference keeps the lesion's borders in view and matches what the model saw.

    Plain torch, the same arithmetic as torchvision's ``v2.Resize(antialias=True)`` on a uint8 tensor
    followed by ``ToDtype(scale=True)`` and ``Normalize`` (equal to 1e-6 on the ISIC images, a test
    checks it), so the inference path does not import torchvision.
    """

    def __init__(self, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size = (image_size, image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img):
        if isinstance(img, Image.Image):
            img = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        if tuple(img.shape[-2:]) != self.size:
            img = F.interpolate(img.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False,
                                antialias=True)[0]
        return (img.float() / 255 - self.mean) / self.std


class ClassificationPresetTrain:
    """Augmentation suited to dermoscopy: lesions have no canonical orientation, so any flip or
    rotation is a valid view; colour varies between dermatoscopes and lighting. ``jpeg=(lo, hi)``
    re-encodes a share ``jpeg_p`` of the views as JPEG at a quality drawn from lo..hi, before the
    crop (the codec's 8x8 blocks then move and scale like the lesion). ``jitter``: the largest brightness,
    contrast and saturation change (hue: a tenth of it)."""

    def __init__(self, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, jpeg=None, jpeg_p=0.5, jitter=0.1):
        from torchvision.transforms import v2 as T

        self.transforms = T.Compose(
            [
                T.ToImage(),
                *([T.RandomApply([T.JPEG(list(jpeg))], p=jpeg_p)] if jpeg else []),
                T.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
                T.RandomHorizontalFlip(),
                T.RandomVerticalFlip(),
                T.RandomApply([T.RandomRotation(180)], p=0.5),
                # Mild by default: colour is part of the diagnosis (blue-white veil, regression, pigment).
                T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 10),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean=list(mean), std=list(std)),
            ]
        )

    def __call__(self, img):
        return self.transforms(img)


DIHEDRAL_VIEWS = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 rotations and mirror images of an image (or a batch), k = 0 the identity:
    k % 4 quarter turns, mirrored left-right first when k >= 4. Dermoscopy has no "up", so all eight
    are the same lesion."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))
