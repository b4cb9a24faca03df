"""Grad-CAM heat maps: where in the image the evidence for "malignant" lies.

Computed with Captum's LayerGradCam (a maintained implementation, not a hand-rolled one) on the
last convolutional block of the VGG trunk, upsampled to the input size, and written as a
transparent PNG that the case page lays over the image. Grad-CAM needs gradients, so it always
runs the PyTorch fp32 model, whichever runtime produced the probability.
"""

import io

import numpy as np
import torch
from PIL import Image

from classifier.model import load_classifier
from classifier.overlay import lay_over
from classifier.presets import DIHEDRAL_VIEWS, ClassificationPresetEval, dihedral

# Colour map anchors (perceptually ordered, dark blue → red → yellow), interpolated to 256 steps.
_ANCHORS = np.array([[0, 0, 90], [40, 60, 200], [0, 170, 200], [120, 210, 60], [250, 200, 0], [230, 30, 0]], float)
COLORMAP = np.stack(
    [np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)],
    axis=1,
).astype(np.uint8)


def target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last convolution's output (after batch norm where there is one), before ReLU and pooling."""
    layers = [m for m in model.features if not isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d))]
    return layers[-1]


class TwoClass(torch.nn.Module):
    """The one-logit classifier seen as two classes (benign, malignant), so that Grad-CAM can show
    the evidence for whichever decision was made: a benign image has little evidence *for*
    malignancy, and a map of that alone would be blank."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logit = self.model(x)
        return torch.stack([-logit, logit], dim=1)


class Explainer:
    """Loads the PyTorch weights of a model file once and computes Grad-CAM maps for batches."""

    def __init__(self, model: torch.nn.Module, metadata, device: str = "cpu"):
        from captum.attr import LayerGradCam  # imported on first use: captum pulls in matplotlib

        self.metadata = metadata
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.transform = ClassificationPresetEval(metadata.input_size, metadata.mean, metadata.std)
        self.gradcam = LayerGradCam(TwoClass(self.model), target_layer(self.model))

    @classmethod
    def from_file(cls, path, device: str = "cpu") -> "Explainer":
        model, metadata = load_classifier(path)
        return cls(model, metadata, device)

    def heatmaps(self, batch: torch.Tensor, malignant, views=None) -> np.ndarray:
        """Grad-CAM for a preprocessed batch, of the evidence for each image's decision
        (``malignant``: one bool per image): N x S x S floats in [0, 1]. ``views``: how many of the
        model's orientations each image's decision averaged (the prediction's ``views``; default one):
        the map is then the mean of those orientations' maps, each turned back to the image as uploaded,
        in the order the model file's cascade runs them."""
        views = [1] * len(batch) if views is None else [max(1, int(v or 1)) for v in views]
        order = (self.metadata.cascade or {}).get("order") or list(range(DIHEDRAL_VIEWS))
        total = torch.zeros(len(batch), *batch.shape[-2:])
        for position, k in enumerate(order[: max(views)]):
            which = [i for i, v in enumerate(views) if v > position]
            turned = dihedral(batch[which], k)
            maps = self._gradcam(turned, [malignant[i] for i in which])
            total[which] += undo_dihedral(maps, k)
        maps = (total / torch.tensor(views, dtype=total.dtype).view(-1, 1, 1)).numpy()
        peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
        return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)

    def _gradcam(self, batch: torch.Tensor, malignant) -> torch.Tensor:
        """Grad-CAM of one orientation, upsampled to the input size, negative evidence cut: N x S x S."""
        from captum.attr import LayerAttribution

        batch = batch.to(self.device).requires_grad_(True)
        target = torch.as_tensor([int(bool(m)) for m in malignant], device=self.device)
        attributions = self.gradcam.attribute(batch, target=target, relu_attributions=True)  # N x 1 x h x w
        maps = LayerAttribution.interpolate(attributions, tuple(batch.shape[-2:]), interpolate_mode="bilinear")
        return maps.detach().squeeze(1).clamp_min(0).cpu()

    def explain_image(self, image: Image.Image, malignant: bool) -> np.ndarray:
        return self.heatmaps(self.transform(image.convert("RGB")).unsqueeze(0), [malignant])[0]


def undo_dihedral(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Maps computed on ``dihedral(x, k)`` (N x H x W), turned back onto x: the inverse turn, then the
    mirror image where ``dihedral`` mirrored first."""
    maps = torch.rot90(maps, -(k % 4), dims=(-2, -1))
    return maps.flip(-1) if k >= 4 else maps


def heatmap_rgba(heat: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A transparent colour overlay of ``size`` (width, height): weak evidence fades out entirely."""
    img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    level = np.asarray(img)
    rgba = np.empty((*level.shape, 4), np.uint8)
    rgba[..., :3] = COLORMAP[level]
    rgba[..., 3] = np.clip(level.astype(np.int32) * 2, 0, 230).astype(np.uint8)  # alpha: 0 where heat is 0
    return Image.fromarray(rgba, mode="RGBA")


def heatmap_png(heat: np.ndarray, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    heatmap_rgba(heat, size).save(out, format="PNG", optimize=True)
    return out.getvalue()


def blend(image: Image.Image, heat: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """The image with the heat map laid over it."""
    return lay_over(image, heatmap_rgba(heat, image.size), opacity)
