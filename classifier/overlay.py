"""Laying a transparent heat map over an image (numpy and Pillow only: the web process's PDF uses it)."""

import numpy as np
from PIL import Image


def lay_over(image: Image.Image, overlay: Image.Image, opacity: float = 0.6) -> Image.Image:
    """``image`` with a transparent ``overlay`` (resized to it) composited at ``opacity``."""
    base = image.convert("RGBA")
    overlay = overlay.convert("RGBA").resize(base.size, Image.BILINEAR)
    alpha = (np.asarray(overlay)[..., 3].astype(np.float32) * opacity).astype(np.uint8)
    overlay.putalpha(Image.fromarray(alpha, mode="L"))
    return Image.alpha_composite(base, overlay).convert("RGB")
