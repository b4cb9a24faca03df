"""A trainable classifier: torchvision's VGG16 trunk and initialisation, from ImageNet weights or none."""

from classifier.model import ARCHITECTURES, VGGClassifier


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for and cannot be had (not cached, not fetchable, or no such weights)."""


def build_model(arch: str = "vgg16", pretrained: str = "none", dropout: float = 0.5,
                colour_constancy: float = 0.0) -> VGGClassifier:
    """Build a classifier; ``pretrained="imagenet"`` starts ``vgg16`` from torchvision's ImageNet weights,
    read from the local cache that ``python -m classifier.training.imagenet`` fills (fetching them once if needed)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if pretrained not in ("imagenet", "none"):
        raise ValueError(f"pretrained must be 'imagenet' or 'none', not {pretrained!r}")
    from torchvision import models

    backbone = getattr(models, ARCHITECTURES[arch][0])(weights=None)
    model = VGGClassifier(backbone.features, dropout=dropout, colour_constancy=colour_constancy)
    if pretrained == "imagenet":
        if arch != "vgg16":
            raise PretrainedWeightsUnavailable(
                f"no ImageNet weights are available for {arch}: only vgg16's (python -m classifier.training.imagenet); "
                "use --arch vgg16, or train from scratch with --pretrained none")
        from classifier.training.imagenet import WeightsUnavailable, load_trunk

        try:
            state = load_trunk()
        except WeightsUnavailable as exc:
            raise PretrainedWeightsUnavailable(str(exc)) from exc
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise PretrainedWeightsUnavailable(f"the cached ImageNet weights do not fit {arch} "
                                               f"(missing {missing}, unexpected {unexpected})")
    return model
