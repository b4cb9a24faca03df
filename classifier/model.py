"""Model builders: torchvision's VGG16 convolutional trunk with a small benign/malignant head."""

import torch
from torch import nn

from classifier.presets import IMAGENET_MEAN, IMAGENET_STD

# The architectures a model file may name, with their torchvision builders: training builds with those
# (classifier.training.builder); inference and Grad-CAM build the trunk with vgg16_features below
# (importing torchvision adds to every worker's resident memory).
ARCHITECTURES = {"vgg16": ("vgg16", "VGG16_Weights"), "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights")}


class ShadesOfGray(nn.Module):
    """Colour constancy by the shades of grey estimate (Finlayson and Trezzi 2004): the illuminant is
    the Minkowski p-norm mean of each channel, and each channel is scaled so that it becomes grey,
    keeping the overall brightness. Dermatoscopes and their lighting differ between clinics; Barata
    et al. (2015) found this normalisation helps dermoscopy classifiers, and ISIC challenge entries
    (among them Gessert et al.'s, ISIC 2019) used it with p = 6.

    Works on normalised input (``mean``/``std``, the model file's) and returns it normalised again,
    so it is part of the network: every runtime (PyTorch, the ONNX graphs, Grad-CAM) applies it the
    same way and no preprocessing code changes. It has no weights. The estimate is the same for all
    8 rotations/mirror images of an image.
    """

    def __init__(self, p: float, mean, std):
        super().__init__()
        self.p = float(p)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x * self.std + self.mean).clamp(0, 1)
        illuminant = rgb.pow(self.p).mean(dim=(2, 3), keepdim=True).pow(1 / self.p)  # N x 3 x 1 x 1
        gain = illuminant.norm(dim=1, keepdim=True) / (illuminant * 3**0.5).clamp_min(1e-6)
        return ((rgb * gain).clamp(0, 1) - self.mean) / self.std


class VGGClassifier(nn.Module):
    """VGG convolutional features, global average pooling and one logit (malignant).

    Global pooling replaces the 120M-parameter fc6/fc7 of the original VGG16, which keeps the
    model file at tens of megabytes and makes the network accept any input size of 32 px or more.
    Parameter names under ``features.`` match torchvision's, so ImageNet weights load directly.
    ``colour_constancy`` (p > 0) puts ``ShadesOfGray(p)`` before the trunk (a property of the model
    file: its metadata's ``colour_constancy``).
    """

    def __init__(self, features: nn.Module, dropout: float = 0.5, colour_constancy: float = 0.0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.constancy = ShadesOfGray(colour_constancy, mean, std) if colour_constancy else nn.Identity()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(512, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(self.constancy(x)))).squeeze(1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled features): the features are the head's input, 512 per image
        (classifier.lesioncheck measures how far an image is from the training images in them)."""
        pooled = self.pool(self.features(self.constancy(x))).flatten(1)
        return self.head(pooled).squeeze(1), pooled


class WithFeatures(nn.Module):
    """A classifier whose forward returns (logits, pooled features): the ONNX export's graph."""

    def __init__(self, model: VGGClassifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_features(x)


# torchvision's VGG16 configuration ("D"): output channels per convolution, "M" for max pooling.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features(batch_norm: bool) -> nn.Sequential:
    """The VGG16 trunk with torchvision's layer order and parameter names (``features.N``), built
    without importing torchvision: loading a model file for inference or Grad-CAM needs no builder
    library (torchvision costs a worker about 160 MB). Training uses torchvision's own builder and
    initialisation (``classifier.training.builder.build_model``); a test checks that both give the
    same state dict keys and shapes."""
    layers, channels = [], 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        channels = v
    return nn.Sequential(*layers)


def model_for_weights(arch: str, colour_constancy: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> VGGClassifier:
    """An uninitialised-by-design classifier to load a model file's weights into (inference)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return VGGClassifier(vgg16_features(batch_norm=arch == "vgg16_bn"), colour_constancy=colour_constancy,
                         mean=mean, std=std)


def model_for_file(metadata) -> VGGClassifier:
    """``model_for_weights`` for a model file's metadata (architecture, colour constancy, normalisation)."""
    return model_for_weights(metadata.arch, metadata.colour_constancy, tuple(metadata.mean), tuple(metadata.std))


def load_classifier(path):
    """(model in fp32, metadata) from a model file; ModelFileError when the weights do not fit."""
    from pathlib import Path

    from classifier.modelfile import ModelFileError, load_model_file

    state, metadata = load_model_file(path)
    model = model_for_file(metadata)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelFileError(f"{Path(path).name}: weights do not fit a {metadata.arch} ({exc})") from exc
    return model, metadata
