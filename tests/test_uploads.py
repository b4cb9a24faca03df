"""Uploads: content decides, bad files get a message and leave nothing behind."""

import io
import os
import struct
import zlib

import pytest
from django.urls import reverse
from PIL import Image

from skinweb.clinic.models import Case
from tests.builders import image_bytes, make_lesion, make_patient, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def lesion(alice):
    return make_lesion(make_patient(alice.clinic))


def post(client, lesion, *files):
    return client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": list(files)})


def stored_files(settings):
    return [p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()]


def png_bomb(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header declares 10 gigapixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_jpeg_and_png_become_queued_cases(client, lesion, settings):
    r = post(client, lesion, upload("smith-back.jpg"), upload("b.png", image_bytes("PNG"), "image/png"))
    assert r.status_code == 302
    cases = list(Case.objects.order_by("pk"))
    assert [c.original_name for c in cases] == ["smith-back.jpg", "b.png"]
    assert all(c.status == "queued" and c.lesion == lesion for c in cases)
    assert cases[0].image.name.endswith(".jpg") and cases[1].image.name.endswith(".png")
    assert "smith" not in cases[0].image.name  # server-generated names
    assert len(stored_files(settings)) == 4  # each image and its thumbnail
    assert (cases[0].width, cases[0].height) == (64, 48) and len(cases[0].sha256) == 64


def test_exif_orientation_applied_and_metadata_stripped(client, lesion):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 0.0)  # GPS latitude
    data = image_bytes("JPEG", size=(80, 40), exif=exif.tobytes())
    post(client, lesion, upload("gps.jpg", data))
    case = Case.objects.get()
    stored = Image.open(case.image.open("rb"))
    assert stored.size == (40, 80)
    assert not stored.getexif()
    assert "exif" not in stored.info and "icc_profile" not in stored.info


BAD_FILES = [
    ("empty.jpg", b"", "empty"),
    ("notes.jpg", b"this is a text file, not an image\n" * 10, "not a readable JPEG or PNG"),
    ("cut.jpg", image_bytes("JPEG", size=(400, 300))[:600], "not a readable JPEG or PNG"),
    ("page.jpg", b"<html><body><script>alert(1)</script></body></html>", "not a readable JPEG or PNG"),
    ("bomb.png", png_bomb(), "refused"),
    ("anim.gif", image_bytes("GIF"), "not a readable JPEG or PNG"),
]


@pytest.mark.parametrize("name,data,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_rejected_with_message_and_nothing_stored(client, lesion, settings, name, data, message):
    r = post(client, lesion, upload(name, data))
    assert r.status_code == 200
    assert message in r.content.decode()
    assert name in r.content.decode()
    assert not Case.objects.exists()
    assert stored_files(settings) == []


def test_file_over_byte_limit_is_rejected(client, lesion, settings):
    settings.MAX_UPLOAD_BYTES = 1000
    out = io.BytesIO()
    Image.frombytes("RGB", (100, 100), os.urandom(30000)).save(out, "PNG")  # noise does not compress
    data = out.getvalue()
    assert len(data) > 1000
    r = post(client, lesion, upload("big.png", data, "image/png"))
    assert "the limit is 1000" in r.content.decode()
    assert not Case.objects.exists() and stored_files(settings) == []


def test_image_over_pixel_limit_is_rejected(client, lesion, settings):
    settings.MAX_IMAGE_PIXELS = 1000
    r = post(client, lesion, upload("wide.jpg", image_bytes("JPEG", size=(100, 20))))
    assert "100 × 20 pixels" in r.content.decode()
    assert not Case.objects.exists() and stored_files(settings) == []


def test_good_files_go_in_when_others_in_the_same_submission_fail(client, lesion, settings):
    r = post(client, lesion, upload("good.jpg"), upload("bad.jpg", b"nope"))
    body = r.content.decode()
    assert r.status_code == 200
    assert "1 image uploaded" in body and "bad.jpg: This is not a readable" in body
    assert [c.original_name for c in Case.objects.all()] == ["good.jpg"]
    assert len(stored_files(settings)) == 2  # the good image and its thumbnail


def test_submission_without_files_gets_a_message(client, lesion):
    r = client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {})
    assert "Choose one or more" in r.content.decode()


def test_grayscale_and_alpha_png_are_stored_as_rgb(client, lesion):
    gray = io.BytesIO()
    Image.new("L", (30, 30), 100).save(gray, "PNG")
    rgba = io.BytesIO()
    Image.new("RGBA", (30, 30), (10, 20, 30, 128)).save(rgba, "PNG")
    post(client, lesion, upload("g.png", gray.getvalue(), "image/png"), upload("a.png", rgba.getvalue(), "image/png"))
    assert Case.objects.count() == 2
    for case in Case.objects.all():
        assert Image.open(case.image.open("rb")).mode == "RGB"


def test_upload_succeeds_while_the_broker_is_down(client, alice, monkeypatch, django_capture_on_commit_callbacks):
    """The case is stored and stays queued; the sweep sends it once the broker is back."""
    from kombu.exceptions import OperationalError

    from skinweb.clinic import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.classify_case, "apply_async", broker_down)
    lesion = make_lesion(make_patient(alice.clinic))
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload("a.jpg")]})
    assert r.status_code == 302
    (case,) = Case.objects.all()
    assert case.status == Case.Status.QUEUED and case.image.storage.exists(case.image.name)


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (48, 32), (0, 128, 200, 10)).save(out, "JPEG")
    return out.getvalue()


def png16() -> bytes:
    out = io.BytesIO()
    Image.new("I;16", (40, 30), 40000).save(out, "PNG")
    return out.getvalue()


def polyglot() -> bytes:
    """A real JPEG with HTML in a comment segment and after the end marker."""
    jpeg = image_bytes("JPEG", size=(64, 48))
    html = b"<html><script>alert(document.cookie)</script></html>"
    comment = b"\xff\xfe" + struct.pack(">H", len(html) + 2) + html
    return jpeg[:2] + comment + jpeg[2:] + html


ODD_BUT_GOOD = [
    ("cmyk.jpg", cmyk_jpeg),
    ("sixteen-bit.png", png16),
    ("polyglot.jpg", polyglot),
]


@pytest.mark.parametrize("name,make", ODD_BUT_GOOD, ids=[o[0] for o in ODD_BUT_GOOD])
def test_odd_but_valid_images_are_normalised(client, lesion, name, make):
    r = post(client, lesion, upload(name, make()))
    assert r.status_code == 302
    case = Case.objects.get()
    data = case.image.open("rb").read()
    stored = Image.open(io.BytesIO(data))
    assert stored.mode == "RGB" and stored.format in ("JPEG", "PNG")
    assert b"<script" not in data and b"<html" not in data  # the polyglot's payload is gone


def test_svg_renamed_jpg_is_refused(client, lesion, settings):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="10" height="10"/></svg>'
    r = post(client, lesion, upload("vector.jpg", svg))
    assert r.status_code == 200 and "not a readable JPEG or PNG" in r.content.decode()
    assert not Case.objects.exists() and stored_files(settings) == []


def test_gps_tags_are_removed(client, lesion):
    img = Image.new("RGB", (50, 40), (200, 100, 50))
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPSInfo IFD
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif)
    assert b"GPS" in out.getvalue() or Image.open(io.BytesIO(out.getvalue())).getexif().get_ifd(0x8825)
    post(client, lesion, upload("gps.jpg", out.getvalue()))
    stored = Image.open(Case.objects.get().image.open("rb"))
    assert not stored.getexif() and not stored.getexif().get_ifd(0x8825)


@pytest.fixture
def decodes(monkeypatch):
    """The size of every pixel decode Pillow does (ImageFile.load), in order."""
    from PIL import ImageFile

    sizes, real_load = [], ImageFile.ImageFile.load

    def load(self):
        if self.tile:  # pixels still to decode
            sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


@pytest.mark.parametrize("fmt,size", [("JPEG", (5000, 3000)), ("PNG", (3000, 5000))])
def test_a_large_upload_is_decoded_once_and_stored_bounded_with_its_thumbnail(client, lesion, settings, decodes,
                                                                              fmt, size):
    settings.MAX_STORED_SIDE = 2048
    data = image_bytes(fmt, size=size)
    decodes.clear()
    r = post(client, lesion, upload(f"big.{fmt.lower()}", data, f"image/{fmt.lower()}"))
    assert r.status_code == 302
    case = Case.objects.get()
    # One decode: a JPEG straight at a reduced scale (never its 15 megapixels), a PNG once at full size.
    full = [s for s in decodes if s[0] * s[1] >= size[0] * size[1]]
    assert len(full) == (0 if fmt == "JPEG" else 1), decodes
    assert max(case.width, case.height) == 2048
    assert abs(case.width / case.height - size[0] / size[1]) < 0.01
    with case.image.open("rb") as f, Image.open(f) as stored:
        assert stored.size == (case.width, case.height)
    with case.thumbnail.open("rb") as f, Image.open(f) as thumb:
        assert max(thumb.size) == 320 and thumb.format == "JPEG"
    from skinweb.audit.models import AuditEvent

    event = AuditEvent.objects.get(action="upload")
    assert event.detail["uploaded_size"] == list(size) and event.detail["stored_size"] == [case.width, case.height]


def test_thumbnails_are_served_as_made_at_upload_without_decoding_again(client, lesion, decodes):
    post(client, lesion, upload())
    case = Case.objects.get()
    decodes.clear()
    r = client.get(reverse("clinic:case_image", args=[case.pk]) + "?size=thumb")
    assert r.status_code == 200 and r["Content-Type"] == "image/jpeg"
    with case.thumbnail.open("rb") as f:
        assert b"".join(r.streaming_content) == f.read()
    assert decodes == []


def test_max_stored_side_zero_keeps_the_full_size(client, lesion, settings):
    settings.MAX_STORED_SIDE = 0
    post(client, lesion, upload("big.jpg", image_bytes("JPEG", size=(2500, 1000))))
    assert (Case.objects.get().width, Case.objects.get().height) == (2500, 1000)


def test_the_decode_budget_lets_one_image_at_the_pixel_limit_decode_at_a_time():
    import threading

    from skinweb.clinic.uploads import DecodeBudget

    budget, order = DecodeBudget(), []

    def small():
        with budget.reserve(10, 60):
            order.append("small")

    with budget.reserve(80, 60):  # a decode at the limit (a larger one is counted as the limit)
        waiting = threading.Thread(target=small)
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and order == []  # it waits for the large decode to finish
        order.append("large done")
    waiting.join(5)
    assert order == ["large done", "small"]
    with budget.reserve(30, 60), budget.reserve(30, 60):  # small ones go side by side
        pass


def test_image_checks_warn_on_bad_images_and_not_on_real_dermoscopy(client, lesion):
    from PIL import ImageFilter

    from skinweb.clinic import imagechecks
    from tests.conftest import FIXTURES

    for path in sorted((FIXTURES / "images").iterdir()):  # real dermoscopy, 256 px and 180 px
        with Image.open(path) as img:
            small = [f"small image ({min(img.size)} px on its shorter side; the model reads 224 px)"]
            assert imagechecks.check(img.convert("RGB")) == (small if min(img.size) < 224 else []), path.name
    with Image.open(sorted((FIXTURES / "images").iterdir())[0]) as img:
        lesion_img = img.convert("RGB")
    assert imagechecks.check(Image.new("RGB", (600, 600), (222, 200, 170))) == ["almost uniform: no lesion visible"]
    assert "blurred" in imagechecks.check(lesion_img.filter(ImageFilter.GaussianBlur(8)))
    assert "too dark" in imagechecks.check(lesion_img.point(lambda v: v // 8))
    assert "overexposed" in imagechecks.check(lesion_img.point(lambda v: 245 + v // 30))
    assert imagechecks.check(lesion_img.resize((120, 120)))[0].startswith("small image (120 px")


def test_a_blank_upload_carries_its_warning_to_the_page_the_pdf_and_the_csv(client, lesion, published_model):
    from pypdf import PdfReader

    from skinweb.clinic import classification

    blank = io.BytesIO()
    Image.new("RGB", (600, 600), (222, 200, 170)).save(blank, format="JPEG")
    post(client, lesion, upload("blank.jpg", blank.getvalue()))
    case = Case.objects.get()
    assert case.image_warnings == ["almost uniform: no lesion visible"]
    classification.classify_case(case.pk)  # it is scored all the same: a warning never blocks
    case.refresh_from_db()
    assert case.status == "done"
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert 'data-testid="image-warnings"' in page and "almost uniform" in page
    pdf = client.get(reverse("clinic:case_report", args=[case.pk])).content
    assert "almost uniform" in " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    rows = b"".join(client.get(reverse("clinic:case_export")).streaming_content).decode().splitlines()
    assert "image_warnings" in rows[0] and "almost uniform" in rows[1]
