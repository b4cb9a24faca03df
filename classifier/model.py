"""Model builders: torchvision's VGG16 convolutional trunk with a small benign/malignant head."""

import torch
from torch import nn

# torchvision builders, imported on first use: a worker running an ONNX artefact never needs them
# (torchvision costs ~160 MB of resident memory).
ARCHITECTURES = {"vgg16": ("vgg16", "VGG16_Weights"), "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights")}


class VGGClassifier(nn.Module):
    """VGG convolutional features, global average pooling and one logit (malignant).

    Global pooling replaces the 120M-parameter fc6/fc7 of the original VGG16, which keeps the
    model file at tens of megabytes and makes the network accept any input size of 32 px or more.
    Parameter names under ``features.`` match torchvision's, so ImageNet weights load directly.
    """

    def __init__(self, features: nn.Module, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(512, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x))).squeeze(1)


class PretrainedWeightsUnavailable(RuntimeError):
    pass


def build_model(arch: str = "vgg16", pretrained: str = "none", dropout: float = 0.5) -> VGGClassifier:
    """Build a classifier; ``pretrained="imagenet"`` downloads torchvision's ImageNet weights."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    from torchvision import models

    builder_name, weights_name = ARCHITECTURES[arch]
    builder, weights = getattr(models, builder_name), getattr(models, weights_name).IMAGENET1K_V1
    if pretrained == "imagenet":
        try:
            backbone = builder(weights=weights)
        except Exception as exc:  # urllib, SSL, hash mismatch: all mean "no weights"
            raise PretrainedWeightsUnavailable(
                f"could not load torchvision's ImageNet weights for {arch} ({exc}). "
                "Check the internet connection, or train from scratch with --pretrained none."
            ) from exc
    elif pretrained == "none":
        backbone = builder(weights=None)
    else:
        raise ValueError(f"pretrained must be 'imagenet' or 'none', not {pretrained!r}")
    return VGGClassifier(backbone.features, dropout=dropout)
