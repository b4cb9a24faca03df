"""Small builders for test data: real images made with PIL, real model files, named users."""

import io
import itertools

from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from classifier import ModelMetadata, save_model_file
from skinweb.accounts.models import Clinic, User
from skinweb.clinic.models import Case, Lesion, Patient
from skinweb.clinic.uploads import normalise_image

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def image_bytes(fmt="JPEG", size=(64, 48), color=(180, 90, 60), mode="RGB", **save_kwargs) -> bytes:
    img = Image.new(mode, size, color if mode == "RGB" else 128)
    # A little structure, so JPEG has something to encode and thumbnails differ from blank.
    for x in range(0, size[0], 8):
        for y in range(size[1] // 3, 2 * size[1] // 3):
            img.putpixel((x, y), (40, 30, 20) if mode == "RGB" else 20)
    out = io.BytesIO()
    img.save(out, format=fmt, **save_kwargs)
    return out.getvalue()


def upload(name="lesion.jpg", data=None, content_type="image/jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, image_bytes() if data is None else data, content_type=content_type)


def make_clinic(name=None) -> Clinic:
    return Clinic.objects.create(name=name or f"Clinic {next(_seq)}")


def make_user(username, clinic=None, staff=False, superuser=False) -> User:
    """A clinician (default), a clinic administrator (``staff``) or the platform administrator
    (``superuser``, usually with no clinic)."""
    return User.objects.create_user(username=username, password=PASSWORD, clinic=clinic,
                                    is_staff=staff or superuser, is_superuser=superuser)


def make_patient(clinic, identifier=None, **fields) -> Patient:
    fields.setdefault("birth_year", 1970)
    fields.setdefault("sex", Patient.Sex.FEMALE)
    return Patient.objects.create(clinic=clinic, identifier=identifier or f"P-{next(_seq):04d}", **fields)


def make_lesion(patient, site="posterior torso", label="") -> Lesion:
    return Lesion.objects.create(patient=patient, site=site, label=label)


def make_case(lesion, user=None, data=None, **fields) -> Case:
    case = lesion.add_image(user, "lesion.jpg", normalise_image(upload(data=data)))
    if fields:
        Case.objects.filter(pk=case.pk).update(**fields)
        case.refresh_from_db()
    return case


def make_model_file(path, input_size=64, threshold=0.5, version="test-vgg16-64px", seed=0):
    """A real VGG16 model file, randomly initialised: small inputs keep the forward pass fast."""
    import torch

    # Imported here: the web-process test imports these builders without PyTorch.
    from classifier.training.builder import build_model

    torch.manual_seed(seed)
    model = build_model("vgg16", pretrained="none")
    meta = ModelMetadata(version=version, input_size=input_size, threshold=threshold)
    return save_model_file(path, model, meta)


def dicom_bytes(pixels=None, jpeg=None, patient_id="ISIC-P1", birth="19610315", sex="F", name="Doe^Jane",
                date="20200101", time="101500", region=("53120007", "Upper limb"), modifier=None,
                sop="1.2.840.10008.5.1.4.1.1.77.1.4", syntax=None, frames=None, preamble=b"\x00" * 128,
                drop_pixels=False, rows=None, columns=None) -> bytes:
    """A DICOM Part 10 file as a dermatoscope or the ISIC Archive writes one: uncompressed RGB ``pixels``
    (an HxWx3 uint8 array), or ``jpeg`` bytes encapsulated as JPEG baseline; every attribute can be set
    wrong on purpose (the hostile-file tests)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = syntax or (JPEGBaseline8Bit if jpeg is not None else ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, preamble
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), "1.2.3.4.5"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, birth, sex
    ds.InstitutionName, ds.ReferringPhysicianName, ds.DeviceSerialNumber = "St Elsewhere", "House^Gregory", "SN-42"
    ds.AcquisitionDate, ds.AcquisitionTime, ds.Modality = date, time, "XC"
    if region:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = region[0], "SCT", region[1]
        if modifier:
            mod = Dataset()
            mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = modifier[0], "SCT", modifier[1]
            item.AnatomicRegionModifierSequence = Sequence([mod])
        ds.AnatomicRegionSequence = Sequence([item])
    if jpeg is not None:
        img = Image.open(io.BytesIO(jpeg))
        ds.Columns, ds.Rows = img.size
        ds.PhotometricInterpretation = "YBR_FULL_422"
        data = encapsulate([jpeg])
    else:
        pixels = np.zeros((32, 48, 3), np.uint8) if pixels is None else pixels
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.PhotometricInterpretation = "RGB"
        data = pixels.tobytes()
        if meta.TransferSyntaxUID.is_compressed:  # raw pixels under a codec's name: garbage to its decoder
            data = encapsulate([data])
    ds.Rows, ds.Columns = rows or ds.Rows, columns or ds.Columns
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames:
        ds.NumberOfFrames = frames
    if not drop_pixels:
        ds.PixelData = data
        if jpeg is not None or meta.TransferSyntaxUID.is_compressed:
            ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def make_referral_cast(north, south) -> dict:
    """The referral roles the access matrices walk: dana, a referrer of Riverside (referring to North), who sent
    North a referral with one image; erin, a referrer of Hillside (referring to South)."""
    from skinweb.referrals.models import Practice, Referral

    riverside = Practice.objects.create(name="Riverside", code="RIV")
    riverside.clinics.add(north)
    hillside = Practice.objects.create(name="Hillside", code="HIL")
    hillside.clinics.add(south)
    dana = User.objects.create_user("dana", practice=riverside)
    erin = User.objects.create_user("erin", practice=hillside)
    referred = make_lesion(make_patient(north, "RIV-1"))
    referral = Referral.objects.create(practice=riverside, clinic=north, created_by=dana, patient_identifier="1",
                                       birth_year=1970, sex="male", site="head/neck", duration_months=2,
                                       urgency="routine", lesion=referred)
    return {"dana": dana, "erin": erin, "referral": referral, "referred_case": make_case(referred, dana)}
