"""Check and normalise uploaded images before anything is stored.

The content decides, never the file name: Pillow must recognise a JPEG or PNG, the declared
size must be within the pixel limit (checked before decoding, against decompression bombs), and
the whole image must decode. The stored copy has EXIF orientation applied and no metadata at all
(EXIF, GPS, ICC text chunks), re-encoded in its own format, at most MAX_STORED_SIDE pixels on its
longer side. The image is decoded once (a large JPEG at a reduced scale straight away), and its
thumbnail is made from that decode, so no later request decodes the full-size upload again.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import io
import math
import threading
import warnings

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext
from PIL import Image, ImageOps

from skinweb.clinic import imagechecks

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png"}
THUMBNAIL_SIDE = 320


class DecodeBudget:
    """Pixels being decoded at once in this process, at most ``limit``: a web process with several
    threads decodes one upload at the pixel limit at a time (its memory is what one such decode
    needs, not one per thread), and small images side by side."""

    def __init__(self):
        self._cond = threading.Condition()
        self._in_use = 0

    @contextlib.contextmanager
    def reserve(self, pixels: int, limit: int):
        pixels = min(pixels, limit)
        with self._cond:
            self._cond.wait_for(lambda: self._in_use + pixels <= limit)
            self._in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= pixels
                self._cond.notify_all()


decode_budget = DecodeBudget()


@dataclasses.dataclass
class NormalisedImage:
    content: ContentFile
    sha256: str
    width: int  # of the stored copy
    height: int
    extension: str
    thumbnail: ContentFile  # JPEG, at most THUMBNAIL_SIDE on its longer side
    original_size: tuple[int, int]  # as uploaded, before orientation and downscaling
    taken_at: datetime.datetime | None = None  # EXIF DateTimeOriginal, read before the metadata is dropped
    warnings: list[str] = dataclasses.field(default_factory=list)  # imagechecks: shown with the result


EXIF_IFD, DATE_TIME_ORIGINAL, DATE_TIME = 0x8769, 36867, 306


def exif_taken_at(img) -> datetime.datetime | None:
    """When the camera says the picture was taken (in the clinic's time zone), or None when it does
    not say, or says something implausible (before 1990, or in the future)."""
    try:
        exif = img.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME)
        naive = datetime.datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except (TypeError, ValueError, OSError, SyntaxError):
        return None
    taken = timezone.make_aware(naive)
    return taken if datetime.datetime(1990, 1, 1, tzinfo=datetime.UTC) < taken <= timezone.now() else None


def normalise_image(upload, max_bytes=None, max_pixels=None, max_side=None) -> NormalisedImage:
    """Return a clean copy of ``upload`` or raise ValidationError with a message for the user."""
    max_bytes = max_bytes or settings.MAX_UPLOAD_BYTES
    max_pixels = max_pixels or settings.MAX_IMAGE_PIXELS
    max_side = settings.MAX_STORED_SIDE if max_side is None else max_side
    if upload.size == 0:
        raise ValidationError(gettext("The file is empty."))
    if upload.size > max_bytes:
        raise ValidationError(
            gettext("The file is %(size)s; the limit is %(limit)s.") % {
                "size": filesizeformat(upload.size), "limit": filesizeformat(max_bytes)}
        )
    upload.seek(0)
    data = upload.read()
    with contextlib.ExitStack() as held:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
                width, height = img.size
                if width * height > max_pixels:
                    raise ValidationError(
                        gettext("The image is %(width)s × %(height)s pixels; the limit is %(limit)s megapixels.") % {
                            "width": width, "height": height, "limit": round(max_pixels / 1e6)}
                    )
                img.verify()  # structure and checksums, before the full decode
                img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
                taken_at = exif_taken_at(img)
                if max_side and img.format == "JPEG" and max(width, height) > max_side:
                    # Decode at 1/2, 1/4 or 1/8 scale, the longer side still at least max_side.
                    r = max_side / max(width, height)
                    img.draft("RGB", (math.ceil(width * r), math.ceil(height * r)))
                held.enter_context(decode_budget.reserve(img.width * img.height, max_pixels))
                img.load()  # the one decode; a truncated file fails here
        except ValidationError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValidationError(gettext("The image declares an implausibly large size and was refused.")) from None
        except Exception:
            # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, struct.error);
            # they all mean the same thing to the clinician.
            raise ValidationError(
                gettext("This is not a readable JPEG or PNG image (the file may be damaged).")) from None

        fmt = img.format
        ImageOps.exif_transpose(img, in_place=True)  # no second full-size copy
        if img.mode != "RGB":
            img = img.convert("RGB")
        if max_side and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    # The budget is released: what is left is at most max_side on its longer side (unless max_side is 0).
    # Pillow writes back what img.info holds (JPEG comments, ICC profile, DPI) unless told otherwise;
    # a comment is where a JPEG/HTML polyglot keeps its payload. Nothing of it is kept.
    img.info = {}
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, format="JPEG", quality=95, subsampling=0)
    else:
        img.save(out, format="PNG", optimize=False)
    clean = out.getvalue()
    thumb = img.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    thumb_bytes = io.BytesIO()
    thumb.save(thumb_bytes, format="JPEG", quality=85)
    return NormalisedImage(
        content=ContentFile(clean),
        sha256=hashlib.sha256(clean).hexdigest(),
        width=img.width,
        height=img.height,
        extension=ALLOWED_FORMATS[fmt],
        thumbnail=ContentFile(thumb_bytes.getvalue()),
        original_size=(width, height),
        taken_at=taken_at,
        warnings=imagechecks.check(img, (width, height)),
    )
