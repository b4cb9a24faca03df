"""DICOM in and out (pydicom).

In: a DICOM Part 10 file of a photographic kind (VL Photographic Image, Dermoscopic Photography Image,
Secondary Capture, as the ISIC Archive and dermatoscope software write them) becomes a case like an
upload: the pixels, decoded with the decoders this installation has (uncompressed, RLE, JPEG baseline
and extended, JPEG 2000 through Pillow; others are refused by name), go through the upload checks and
are stored as a clean PNG; the patient is matched by Patient ID in the clinic or created (birth year and
sex from the file); the acquisition date is the visit date; the anatomic region gives the lesion site.

What is kept of the file follows DICOM PS3.15 Annex E, the Basic Application Level Confidentiality
Profile with its Retain Longitudinal Temporal Information with Full Dates option (the acquisition date
and time) and Retain Patient Characteristics option (sex; the birth date reduced to its year), with one
departure: the Patient ID is kept, as the clinic's identifier of the patient (it is how a patient is
matched; a clinic whose IDs name people maps them before export). Everything else (names, other dates,
institution, physicians, device serial numbers, UIDs, free text, private tags) is read and dropped:
the file itself is never stored.

Refused with a message, nothing stored: not Part 10, a preamble that holds another format (a
DICOM/executable polyglot), another kind of object, several frames, no pixel data, dimensions that
do not match the pixel data, more pixels than MAX_IMAGE_PIXELS (checked before decoding), a transfer
syntax with no decoder here, pixel data that does not decode.

Out: a case's stored image with its result as a VL Photographic Image object (uncompressed RGB, so its
pixels are the stored ones exactly), the result in Image Comments; reading it back gives the same pixels
and dates (tests/test_dicom.py).
"""

import dataclasses
import datetime
import io

import numpy as np
import pydicom
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from skinweb.clinic.fhir import SITE_SNOMED
from skinweb.clinic.uploads import decode_budget, normalise_image

VL_PHOTOGRAPHIC = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
ACCEPTED = {
    VL_PHOTOGRAPHIC: "VL Photographic Image",
    UID("1.2.840.10008.5.1.4.1.1.77.1.7"): "Dermoscopic Photography Image",
    UID("1.2.840.10008.5.1.4.1.1.7"): "Secondary Capture Image",
    UID("1.2.840.10008.5.1.4.1.1.7.4"): "Multi-frame True Color Secondary Capture Image",
}
# The 128-byte preamble: zeros, or a TIFF header (PS3.10 lets an application profile put one there).
# Anything else is another format's header riding on the file (MZ: a Windows executable, ELF...).
TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
SCT = ("SCT", "SRT")  # SNOMED CT's coding scheme designators (SRT: the older one)
# Anatomic region codes to the ISIC site list: the trunk by its modifier (SITE_SNOMED in reverse).
TRUNK, BACK = "22943007", "77568009"
MODIFIERS = {"255549009": "anterior torso", "49370004": "lateral torso", "255551008": "posterior torso"}
MODIFIER_OF = {site: (code, site.split()[0].capitalize()) for code, site in MODIFIERS.items()}
REGION_SITE = {code: site for site, (code, _) in SITE_SNOMED.items() if code != TRUNK}
SEX = {"M": "male", "F": "female", "O": "other"}
SEX_CODE = {"male": "M", "female": "F", "other": "O"}


@dataclasses.dataclass
class DicomImage:
    image: object  # uploads.NormalisedImage
    patient_id: str
    birth_year: int | None
    sex: str
    site: str | None
    series: str  # images of one series of one patient at one site go to one lesion


def refuse(message: str):
    raise ValidationError(message)


def dicom_date(ds, date_tag: str, time_tag: str | None = None) -> datetime.datetime | None:
    """A DICOM date (DA, with its TM) or date-time (DT) as an aware datetime in the clinic's time zone;
    None when absent, unreadable or implausible (before 1990, or in the future)."""
    text = str(ds.get(date_tag, "") or "").strip()
    if time_tag:
        text = text[:8] + str(ds.get(time_tag, "") or "").strip()
    digits = text.split(".")[0].split("+")[0].split("-")[0]  # a fraction or a UTC offset may follow
    for length, fmt in ((14, "%Y%m%d%H%M%S"), (12, "%Y%m%d%H%M"), (8, "%Y%m%d")):
        if len(digits) >= length:
            try:
                naive = datetime.datetime.strptime(digits[:length], fmt)
            except ValueError:
                return None
            break
    else:
        return None
    taken = timezone.make_aware(naive)
    return taken if datetime.datetime(1990, 1, 1, tzinfo=datetime.UTC) < taken <= timezone.now() else None


def taken_at(ds) -> datetime.datetime | None:
    return (dicom_date(ds, "AcquisitionDateTime") or dicom_date(ds, "AcquisitionDate", "AcquisitionTime")
            or dicom_date(ds, "ContentDate", "ContentTime") or dicom_date(ds, "StudyDate", "StudyTime"))


def site_of(ds) -> str | None:
    """The ISIC site from the Anatomic Region Sequence (SNOMED CT), or None when it gives none we know."""
    region = (ds.get("AnatomicRegionSequence") or [None])[0]
    if region is None or str(region.get("CodingSchemeDesignator", "")) not in SCT:
        return None
    code = str(region.get("CodeValue", ""))
    if code in REGION_SITE:
        return REGION_SITE[code]
    if code == TRUNK:
        modifier = (region.get("AnatomicRegionModifierSequence") or [None])[0]
        return MODIFIERS.get(str(modifier.get("CodeValue", "")), "anterior torso") if modifier else "anterior torso"
    return None


def birth_year_of(ds, taken) -> int | None:
    birth = str(ds.get("PatientBirthDate", "") or "")
    if len(birth) >= 4 and birth[:4].isdigit() and 1900 <= int(birth[:4]) <= timezone.localdate().year:
        return int(birth[:4])
    age = str(ds.get("PatientAge", "") or "")  # "065Y": at the acquisition
    if taken and len(age) == 4 and age[:3].isdigit() and age[3] == "Y":
        return taken.year - int(age[:3])
    return None


def rgb_array(ds) -> np.ndarray:
    """The frame as 8-bit RGB (pydicom gives YCbCr as RGB already)."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        refuse("Palette-colour DICOM images are not accepted: export the image as RGB.")
    array = ds.pixel_array
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        refuse(f"The pixel data has an unexpected shape {array.shape}.")
    if array.dtype != np.uint8:
        top = float(array.max()) or 1.0
        array = np.clip(array.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        array = 255 - array
    return array


def read(upload, max_bytes: int | None = None, max_pixels: int | None = None) -> DicomImage:
    """Check and decode one uploaded DICOM file; ValidationError with a message for the user."""
    max_bytes = max_bytes or settings.MAX_UPLOAD_BYTES
    max_pixels = max_pixels or settings.MAX_IMAGE_PIXELS
    if upload.size == 0:
        refuse("The file is empty.")
    if upload.size > max_bytes:
        refuse(f"The file is {filesizeformat(upload.size)}; the limit is {filesizeformat(max_bytes)}.")
    upload.seek(0)
    data = upload.read()
    if len(data) < 132 or data[128:132] != b"DICM":
        refuse("This is not a DICOM file (no DICM header after the 128-byte preamble).")
    preamble = data[:128]
    if preamble.strip(b"\x00") and not preamble.startswith(TIFF_HEADERS):
        refuse("The file's preamble holds another format (such as a program): refused.")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        # pydicom decodes elements when first read: decode every one now, so that a damaged element (an unknown
        # value representation, found by the upload fuzz test in the acquisition time) refuses the file here.
        for _ in ds.iterall():
            pass
        sop = UID(str(ds.file_meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "")))
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        has_pixels = "PixelData" in ds
    except ValidationError:
        raise
    except Exception:  # pydicom raises many types for a damaged or truncated file
        refuse("This DICOM file cannot be read (damaged, truncated, or without image attributes).")
    if sop not in ACCEPTED:
        refuse(f"Only photographic DICOM objects are accepted ({', '.join(sorted(ACCEPTED.values()))}); "
               f"this is {sop.name or sop}.")
    if not has_pixels:
        refuse("The DICOM file has no pixel data.")
    if not syntax.is_transfer_syntax:
        refuse("The DICOM file declares a transfer syntax that does not exist: its pixel data cannot be read.")
    if frames != 1:
        refuse(f"The DICOM file holds {frames} frames; send one image per file.")
    if rows < 1 or columns < 1 or rows * columns > max_pixels:
        refuse(f"The image is {columns} × {rows} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
    if not syntax.is_compressed:
        expected = rows * columns * samples * ((bits + 7) // 8)
        if len(ds.PixelData) < expected:
            refuse(f"The DICOM file declares {columns} × {rows} pixels but its pixel data is shorter.")
    elif not get_decoder(syntax).is_available:
        refuse(f"The pixel data is compressed as {syntax.name}, which this installation cannot decode; "
               "send it uncompressed, RLE, JPEG baseline or JPEG 2000.")
    with decode_budget.reserve(rows * columns, max_pixels):
        try:
            array = rgb_array(ds)
        except ValidationError:
            raise
        except Exception:
            refuse("The DICOM pixel data cannot be decoded (damaged, or not what the file declares).")
        img = Image.fromarray(array, "RGB")
        del array
        side = settings.MAX_STORED_SIDE
        if side and max(img.size) > side:
            img.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        png = io.BytesIO()
        img.save(png, format="PNG")
    # The upload checks, on the decoded pixels (bounded above: no byte limit applies to this copy).
    image = normalise_image(SimpleUploadedFile("dicom.png", png.getvalue(), "image/png"), max_bytes=2**62)
    image.original_size = (columns, rows)
    image.taken_at = taken_at(ds)
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        refuse("The DICOM file has no Patient ID: the patient cannot be matched.")
    return DicomImage(image=image, patient_id=patient_id[:64], birth_year=birth_year_of(ds, image.taken_at),
                      sex=SEX.get(str(ds.get("PatientSex", "")).upper(), "unknown"), site=site_of(ds),
                      series=str(ds.get("SeriesInstanceUID", "")) or str(ds.get("StudyInstanceUID", "")))


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def export(case) -> bytes:
    """The case's stored image with its result, as a VL Photographic Image Part 10 file."""
    from django.core.files.storage import default_storage

    with default_storage.open(case.image.name, "rb") as f:
        img = Image.open(f)
        img.load()
    pixels = np.asarray(img.convert("RGB"))
    patient, lesion = case.lesion.patient, case.lesion
    taken = timezone.localtime(case.taken_at)
    uid = lambda *parts: generate_uid(entropy_srcs=["skinweb", *map(str, parts)])  # noqa: E731 (stable UIDs)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC
    meta.MediaStorageSOPInstanceUID = uid("image", case.pk)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_PHOTOGRAPHIC, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("lesion", lesion.pk), uid("visit", lesion.pk, taken.date())
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "", patient.identifier, ""
    ds.PatientSex = SEX_CODE.get(patient.sex, "")
    ds.PatientAge = f"{max(0, taken.year - patient.birth_year):03d}Y"
    for prefix in ("Study", "Content", "Acquisition"):
        setattr(ds, f"{prefix}Date", taken.strftime("%Y%m%d"))
        if prefix != "Acquisition":
            setattr(ds, f"{prefix}Time", taken.strftime("%H%M%S"))
    ds.AcquisitionDateTime = taken.strftime("%Y%m%d%H%M%S")
    ds.Modality, ds.Manufacturer, ds.ReferringPhysicianName, ds.AccessionNumber = "XC", "skinweb", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(lesion.pk)[:16], 1, 1
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation, ds.ImageLaterality = "NO", "U"
    ds.LossyImageCompression = "01" if case.image.name.endswith(".jpg") else "00"
    if lesion.site in SITE_SNOMED:
        region = code(*SITE_SNOMED[lesion.site])
        if lesion.site in MODIFIER_OF:
            region.AnatomicRegionModifierSequence = Sequence([code(*MODIFIER_OF[lesion.site])])
        ds.AnatomicRegionSequence = Sequence([region])
    ds.BodyPartExamined = ""
    prediction = case.shown_prediction
    if case.result_withheld:
        comment = f"skinweb: no AI result, the image {case.withheld_reason}"
    elif prediction:
        comment = (f"skinweb AI result (decision support, not a diagnosis): {prediction.summary}; model "
                   f"{prediction.model_version.version}"
                   + (f"; score shown on a clinician's request: the image {case.withheld_reason}"
                      if case.score_released else ""))
    else:
        comment = "skinweb: not classified"
    ds.ImageComments = comment[:10240]
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
