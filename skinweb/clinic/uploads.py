"""Check and normalise uploaded images before anything is stored.

The content decides, never the file name: Pillow must recognise a JPEG or PNG, the declared
size must be within the pixel limit (checked before decoding, against decompression bombs), and
the whole image must decode. The stored copy has EXIF orientation applied and no metadata at all
(EXIF, GPS, ICC text chunks), re-encoded in its own format.
"""

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.template.defaultfilters import filesizeformat
from PIL import Image, ImageOps

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png"}


@dataclass
class NormalisedImage:
    content: ContentFile
    sha256: str
    width: int
    height: int
    extension: str


def normalise_image(upload, max_bytes=None, max_pixels=None) -> NormalisedImage:
    """Return a clean copy of ``upload`` or raise ValidationError with a message for the user."""
    max_bytes = max_bytes or settings.MAX_UPLOAD_BYTES
    max_pixels = max_pixels or settings.MAX_IMAGE_PIXELS
    if upload.size == 0:
        raise ValidationError("The file is empty.")
    if upload.size > max_bytes:
        raise ValidationError(
            f"The file is {filesizeformat(upload.size)}; the limit is {filesizeformat(max_bytes)}."
        )
    upload.seek(0)
    data = upload.read()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            width, height = img.size
            if width * height > max_pixels:
                raise ValidationError(
                    f"The image is {width} × {height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels."
                )
            img.verify()  # structure and checksums, before the full decode
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            img.load()  # a truncated file fails here
    except ValidationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError("The image declares an implausibly large size and was refused.") from None
    except Exception:
        # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, struct.error);
        # they all mean the same thing to the clinician.
        raise ValidationError("This is not a readable JPEG or PNG image (the file may be damaged).") from None

    fmt = img.format
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    # Pillow writes back what img.info holds (JPEG comments, ICC profile, DPI) unless told otherwise;
    # a comment is where a JPEG/HTML polyglot keeps its payload. Nothing of it is kept.
    img.info = {}
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, format="JPEG", quality=95, subsampling=0)
    else:
        img.save(out, format="PNG", optimize=False)
    clean = out.getvalue()
    return NormalisedImage(
        content=ContentFile(clean),
        sha256=hashlib.sha256(clean).hexdigest(),
        width=img.width,
        height=img.height,
        extension=ALLOWED_FORMATS[fmt],
    )
