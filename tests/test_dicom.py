"""DICOM: import through the page and the API (patient matched or created, acquisition date as the visit
date, anatomic region as the site, identifying attributes dropped), export with the result, the round
trip, and hostile files refused with a message and nothing stored."""

import io

import numpy as np
import pydicom
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from pydicom.uid import JPEGLSLossless, RLELossless

from skinweb.api.models import ApiToken
from skinweb.audit.models import AuditEvent
from skinweb.clinic.models import Case, Lesion, Patient, Prediction
from skinweb.models_registry.models import ModelVersion
from tests.builders import dicom_bytes, image_bytes, make_lesion, make_patient
from tests.conftest import FIXTURES
from tests.test_uploads import stored_files

pytestmark = pytest.mark.django_db

ISIC = (FIXTURES / "images" / "ISIC_0010251.jpg").read_bytes()  # attribution: tests/fixtures/isic/ATTRIBUTION


def dcm(name="lesion.dcm", **kwargs):
    return SimpleUploadedFile(name, dicom_bytes(**kwargs), content_type="application/dicom")


def stored_pixels(case) -> np.ndarray:
    with default_storage.open(case.image.name, "rb") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def test_an_isic_like_jpeg_dicom_becomes_a_case_of_a_new_patient(client, alice, settings):
    r = client.post(reverse("clinic:dicom_import"), {"files": [dcm(jpeg=ISIC)]})
    assert r.status_code == 200 and "1 DICOM image imported" in r.content.decode()
    case = Case.objects.get()
    patient = case.lesion.patient
    assert (patient.identifier, patient.birth_year, patient.sex, patient.clinic) == ("ISIC-P1", 1961, "female",
                                                                                      alice.clinic)
    assert case.lesion.site == "upper extremity" and case.status == "queued"
    assert timezone.localtime(case.taken_at).strftime("%Y-%m-%d %H:%M") == "2020-01-01 10:15"
    assert case.image.name.endswith(".png") and (case.width, case.height) == Image.open(io.BytesIO(ISIC)).size
    # Decoded as JPEG (YCbCr to RGB): close to the JPEG decoded by Pillow, not the same bytes.
    assert np.abs(stored_pixels(case).astype(int) - np.asarray(Image.open(io.BytesIO(ISIC))).astype(int)).mean() < 3
    # Nothing identifying beyond the identifier is kept: not the name, the institution, the physician.
    rows = [row for m in (Patient, Lesion, Case, AuditEvent) for row in m.objects.values()]
    kept = " ".join(str(v) for row in rows for v in row.values())
    assert not any(word in kept for word in ("Doe", "Jane", "Elsewhere", "House", "SN-42", "19610315"))
    files = stored_files(settings)
    assert len(files) == 2 and not any(f.read_bytes()[128:132] == b"DICM" for f in files)  # no DICOM stored
    assert AuditEvent.objects.filter(action="import_dicom", object_id=str(case.pk)).exists()


def test_a_known_patient_is_matched_and_one_series_makes_one_lesion(client, alice):
    patient = make_patient(alice.clinic, "isic-p1", birth_year=1950)
    files = [dcm(f"{i}.dcm", pixels=np.full((20, 30, 3), 40 * i, np.uint8), birth="") for i in range(3)]
    files.append(dcm("trunk.dcm", region=("22943007", "Trunk"), modifier=("49370004", "Lateral")))
    r = client.post(reverse("clinic:dicom_import"), {"files": files})
    assert r.status_code == 200
    assert Patient.objects.count() == 1 and Case.objects.filter(lesion__patient=patient).count() == 4
    assert sorted(Lesion.objects.values_list("site", flat=True)) == ["lateral torso", "upper extremity"]
    # A new patient needs a birth date from the file.
    r = client.post(reverse("clinic:dicom_import"), {"files": [dcm(patient_id="NEW-9", birth="")]})
    assert r.status_code == 400 and "create the patient first" in r.content.decode()
    assert not Patient.objects.filter(identifier="NEW-9").exists()


def test_export_round_trip_gives_the_same_pixels_and_dates(client, alice):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    client.post(reverse("clinic:dicom_import"), {"files": [dcm(pixels=pixels, region=("77568009", "Back"))]})
    case = Case.objects.get()
    assert np.array_equal(stored_pixels(case), pixels)  # uncompressed in, lossless PNG stored
    version = ModelVersion.objects.create(version="v-dicom", filename="v.safetensors", arch="vgg16", input_size=64,
                                          threshold=0.25, status=ModelVersion.Status.PUBLISHED)
    case.mark_done(Prediction.objects.create(case=case, model_version=version, probability=0.7, threshold=0.25,
                                             decision="malignant", elapsed_ms=1, device="cpu"))
    r = client.get(reverse("clinic:case_dicom", args=[case.pk]))
    assert r.status_code == 200 and r["Content-Type"] == "application/dicom"
    exported = pydicom.dcmread(io.BytesIO(r.content))
    assert str(exported.PatientName) == "" and exported.PatientID == "ISIC-P1" and exported.Modality == "XC"
    assert "malignant: 0.70 (threshold 0.250)" in exported.ImageComments and "v-dicom" in exported.ImageComments
    assert exported.AnatomicRegionSequence[0].CodeValue == "77568009"
    # Back in, through the API, into the same lesion: the same pixels and the same date.
    token = ApiToken.objects.create(alice, name="pacs")[1]
    r = client.post(reverse("api:dicom-list"), {"files": [SimpleUploadedFile("back.dcm", r.content)],
                                                 "lesion": case.lesion_id}, HTTP_AUTHORIZATION=f"Token {token}")
    assert r.status_code == 201, r.content
    again = Case.objects.get(pk=r.json()["cases"][0]["id"])
    assert again.lesion_id == case.lesion_id and again.taken_at == case.taken_at
    assert np.array_equal(stored_pixels(again), stored_pixels(case))
    # A file of another patient does not go into this lesion.
    r = client.post(reverse("api:dicom-list"), {"files": [dcm(patient_id="OTHER")], "lesion": case.lesion_id},
                    HTTP_AUTHORIZATION=f"Token {token}")
    assert r.status_code == 400 and "not this lesion's" in r.json()["rejected"][0]["error"]


HOSTILE = [
    ("no pixel data", dict(drop_pixels=True), "no pixel data"),
    ("lying dimensions", dict(rows=3000, columns=4000), "pixel data is shorter"),
    ("huge frame", dict(rows=60000, columns=60000), "megapixels"),
    ("two frames", dict(frames=2), "2 frames"),
    ("CT image", dict(sop="1.2.840.10008.5.1.4.1.1.2"), "Only photographic DICOM objects"),
    ("polyglot", dict(preamble=b"MZ\x90\x00" + b"\x00" * 124), "preamble holds another format"),
    ("no decoder", dict(syntax=JPEGLSLossless), "cannot decode"),
    ("undecodable", dict(syntax=RLELossless), "cannot be decoded"),
    ("no patient ID", dict(patient_id=""), "no Patient ID"),
]


@pytest.mark.parametrize("name, kwargs, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_dicom_is_refused_and_nothing_stored(client, alice, settings, name, kwargs, message):
    r = client.post(reverse("clinic:dicom_import"), {"files": [dcm(**kwargs)]})
    assert r.status_code == 400 and message in r.content.decode(), r.content.decode()[-3000:]
    assert not Case.objects.exists() and not Patient.objects.exists() and stored_files(settings) == []


@pytest.mark.parametrize("data, message", [
    (b"\x00" * 128 + b"DICM", "cannot be read"),  # a preamble and nothing else
    (image_bytes(), "not a DICOM file"),
    (dicom_bytes()[:400], "cannot be read"),  # truncated
    # Found by tests/test_upload_fuzz.py: one byte of the transfer syntax's UID changed (pydicom still reads it).
    (dicom_bytes().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.7\x00", 1),
     "transfer syntax that does not exist"),
    (b"", "empty"),
])
def test_files_that_are_not_whole_dicom_are_refused(client, alice, settings, data, message):
    r = client.post(reverse("clinic:dicom_import"), {"files": [SimpleUploadedFile("x.dcm", data)]})
    assert r.status_code == 400 and message in r.content.decode()
    assert not Case.objects.exists() and stored_files(settings) == []


def test_dicom_import_stays_in_the_clinic(client, alice, bob, root):
    other = make_lesion(make_patient(bob.clinic, "ISIC-P1"))
    token = ApiToken.objects.create(alice, name="pacs")[1]
    r = client.post(reverse("api:dicom-list"), {"files": [dcm()], "lesion": other.pk},
                    HTTP_AUTHORIZATION=f"Token {token}")
    assert r.status_code == 400 and r.json() == {"lesion": ["No such lesion in your clinic."]}
    assert not Case.objects.exists()
    client.force_login(root)
    assert client.get(reverse("clinic:dicom_import")).status_code == 403  # no clinic to import into
    # South has a patient ISIC-P1 too: North's import makes North's own, and South's has no new image.
    client.force_login(alice)
    assert client.post(reverse("clinic:dicom_import"), {"files": [dcm()]}).status_code == 200
    assert sorted(Patient.objects.filter(identifier="ISIC-P1").values_list("clinic__name", flat=True)) == [
        "North", "South"]
    assert not other.cases.exists()
