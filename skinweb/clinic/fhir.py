"""A case, or a lesion's visit, as a FHIR R4 Bundle for the clinic's electronic record.

What goes in: the ``Patient`` (the clinic's pseudonymous identifier, sex and birth year: skinweb
stores no name), the model as a ``Device`` (name, version, decision threshold), per image a ``Media``
(its URL in this API, the body site coded in SNOMED CT where the site list allows), the result as
``Observation``s (malignancy probability; the decision at the stated threshold; the borderline band;
the differential where the version has one), a ``DiagnosticReport`` that gathers them (preliminary
until a clinician has reviewed the case, then final) and a ``DocumentReference`` for the PDF report.
Nothing else: not the upload's file name (people name files after patients), not the clinician.

Resources are built as plain dicts and validated with fhir.resources (its R4B models, R4's technical
correction 4.3: the resources used here have the same elements in R4 4.0.1). Their ids and
identifiers are derived from the records (uuid5), so exporting or pushing the same case twice gives the
same resources, and a push is a transaction of conditional creates: a FHIR server stores each once.
"""

import datetime
import json
import urllib.error
import urllib.request
import uuid

from django.urls import reverse
from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle

from classifier import reference
from skinweb.clinic.models import Case
from skinweb.clinic.similar import differential_probabilities

NAMESPACE = uuid.UUID("5b0e7b8e-8f55-4a43-9d43-6b0f4e2b9b1a")  # skinweb's; never change it
SYSTEM = "urn:skinweb"  # identifiers and codes of this installation's own making
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
# The ISIC site vocabulary in SNOMED CT, where a site maps to one body structure (palms/soles and
# oral/genital do not: they go as text only).
SITE_SNOMED = {
    "head/neck": ("774007", "Structure of head and/or neck"),
    "upper extremity": ("53120007", "Upper limb structure"),
    "lower extremity": ("61685007", "Lower limb structure"),
    "posterior torso": ("77568009", "Structure of back of trunk"),
    "anterior torso": ("22943007", "Trunk structure"),
    "lateral torso": ("22943007", "Trunk structure"),
}
FHIR_JSON = "application/fhir+json"


def ref(kind: str, *parts) -> str:
    """The stable uuid of one resource of this installation, e.g. ref("Media", case.pk)."""
    return str(uuid.uuid5(NAMESPACE, "/".join([kind, *map(str, parts)])))


def identifier(kind: str, *parts) -> dict:
    return {"system": f"{SYSTEM}:{kind.lower()}", "value": "-".join(map(str, parts))}


def when(value) -> str | None:
    return timezone.localtime(value).isoformat() if value else None


def text_concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def body_site(site: str, label: str) -> dict:
    text = site + (f" ({label})" if label else "")
    if site in SITE_SNOMED:
        code, display = SITE_SNOMED[site]
        return {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": text}
    return {"text": text}


def quantity(value: float) -> dict:
    return {"value": round(float(value), 6), "unit": "probability", "system": UCUM, "code": "1"}


class Builder:
    """The resources of one bundle, each once (a patient or a model version shared by several images)."""

    def __init__(self, absolute):
        self.absolute = absolute  # path -> absolute URL
        self.entries: dict[str, dict] = {}

    def add(self, resource: dict) -> dict:
        """Add a resource (its ``id`` set) and return a reference to it."""
        full = f"urn:uuid:{resource['id']}"
        self.entries.setdefault(full, resource)
        return {"reference": full}

    def patient(self, patient) -> dict:
        return self.add({
            "resourceType": "Patient", "id": ref("Patient", patient.pk),
            "identifier": [{"system": f"{SYSTEM}:clinic-{patient.clinic_id}:patient", "value": patient.identifier}],
            "gender": patient.sex, "birthDate": f"{patient.birth_year:04d}",
        })

    def device(self, version) -> dict:
        return self.add({
            "resourceType": "Device", "id": ref("Device", version.version),
            "identifier": [identifier("Device", version.version)],
            "status": "active",
            "deviceName": [{"name": f"skinweb {version.arch.upper()} malignancy classifier", "type": "model-name"}],
            "type": {"text": "AI classifier of dermoscopic images (benign or malignant)"},
            "version": [{"value": version.version}],
            "property": [{"type": {"text": "decision threshold (probability of malignancy)"},
                          "valueQuantity": [quantity(version.threshold)]}],
        })

    def case(self, case: Case) -> None:
        lesion, patient = case.lesion, case.lesion.patient
        subject = self.patient(patient)
        site = body_site(lesion.site, lesion.label)
        image_type = "image/png" if case.image.name.endswith(".png") else "image/jpeg"
        media = self.add({
            "resourceType": "Media", "id": ref("Media", case.pk), "identifier": [identifier("Media", case.pk)],
            "status": "completed",
            "type": text_concept("http://terminology.hl7.org/CodeSystem/media-type", "image", "Image"),
            "modality": {"text": "Dermoscopy"},
            "subject": subject, "createdDateTime": when(case.taken_at), "bodySite": site,
            "height": case.height or None, "width": case.width or None,
            "content": {"contentType": image_type, "url": self.absolute(reverse("api:case-image", args=[case.pk])),
                        "title": f"Dermoscopic image, case {case.pk}"},
        })
        report = {
            "resourceType": "DiagnosticReport", "id": ref("DiagnosticReport", case.pk),
            "identifier": [identifier("DiagnosticReport", case.pk)],
            "code": {"coding": [{"system": SYSTEM + ":report", "code": "ai-dermoscopy",
                                 "display": "AI classification of a dermoscopic image"}],
                     "text": "AI classification of a dermoscopic image"},
            "subject": subject, "effectiveDateTime": when(case.taken_at),
            "media": [{"comment": "The classified image", "link": media}],
        }
        prediction = case.shown_prediction
        if case.result_withheld:
            # No decision on what is not a lesion image: no Observation, a conclusion that says why.
            report.update(status="final", issued=when(case.prediction.created_at),
                          conclusion=f"No AI result: the image {case.withheld_reason}."[:1000])
        elif prediction is None:
            report["status"] = "cancelled" if case.status == Case.Status.FAILED else "registered"
            if case.failure_reason:
                report["conclusion"] = f"Not classified: {case.failure_reason}"[:1000]
        else:
            observations = self.observations(case, prediction, subject, media, site)
            requested = (f" Score shown on a clinician's request: the image {case.withheld_reason}."
                         if case.score_released else "")
            report.update(status="final" if case.feedback_id else "preliminary", issued=when(prediction.created_at),
                          result=observations, conclusion=f"AI, not a diagnosis: {prediction.summary}.{requested}")
        self.add(report)
        self.add({
            "resourceType": "DocumentReference", "id": ref("DocumentReference", case.pk),
            "masterIdentifier": identifier("DocumentReference", case.pk),
            "status": "current", "subject": subject, "date": when(timezone.now()),
            "type": {"text": "skinweb case report (PDF)"},
            "description": "One page: the image, its heat map, the result and the clinician's feedback",
            "content": [{"attachment": {"contentType": "application/pdf",
                                        "url": self.absolute(reverse("api:case-report", args=[case.pk])),
                                        "title": f"skinweb-case-{case.pk}.pdf"}}],
            "context": {"related": [{"reference": f"urn:uuid:{report['id']}"}]},
        })

    def observations(self, case, prediction, subject, media, site) -> list[dict]:
        version = prediction.model_version
        common = {"status": "final", "subject": subject, "effectiveDateTime": when(case.taken_at),
                  "issued": when(prediction.created_at), "device": self.device(version), "bodySite": site,
                  "derivedFrom": [media],
                  "method": {"text": f"{version.arch.upper()} {version.version}, {prediction.views or 8} orientations "
                                     f"averaged ({prediction.runtime or 'torch'})"}}

        def observation(name, code, display, **fields):
            return self.add({"resourceType": "Observation", "id": ref("Observation", case.pk, version.version, name),
                             "identifier": [identifier("Observation", case.pk, version.version, name)],
                             "code": text_concept(SYSTEM + ":observation", code, display), **common, **fields})

        low, high = prediction.band
        out = [
            observation("probability", "malignancy-probability", "Probability of malignancy (AI)",
                        valueQuantity=quantity(prediction.probability),
                        referenceRange=[{"high": quantity(prediction.threshold),
                                         "text": "below the decision threshold: benign"}]),
            observation("decision", "malignancy-decision", "Benign or malignant at the stated threshold (AI)",
                        valueCodeableConcept=text_concept(SYSTEM + ":decision", prediction.decision,
                                                          prediction.decision.capitalize()),
                        component=[{"code": {"text": "decision threshold"},
                                    "valueQuantity": quantity(prediction.threshold)}]),
            observation("band", "borderline", "Within the borderline band (AI)", valueBoolean=prediction.borderline,
                        component=[{"code": {"text": "band low"}, "valueQuantity": quantity(low)},
                                   {"code": {"text": "band high"}, "valueQuantity": quantity(high)}]),
        ]
        differential = differential_probabilities(prediction)
        if differential:
            out.append(observation(
                "differential", "differential-diagnosis", "Differential diagnosis (AI)",
                component=[{"code": text_concept(SYSTEM + ":diagnosis", name, reference.class_label(name)),
                            "valueQuantity": quantity(p)} for name, p in differential.items()]))
        return out

    def bundle(self, kind: str) -> dict:
        entries = []
        for full, resource in self.entries.items():
            entry = {"fullUrl": full, "resource": {k: v for k, v in resource.items() if v is not None}}
            if kind == "transaction":
                # A conditional create: stored once, however often it is sent.
                keys = resource.get("identifier") or [resource.get("masterIdentifier")]
                entry["request"] = {"method": "POST", "url": resource["resourceType"],
                                    "ifNoneExist": f"identifier={keys[0]['system']}|{keys[0]['value']}"}
            entries.append(entry)
        data = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": kind,
                "timestamp": when(timezone.now()), "entry": entries}
        return validated(data)


def validated(data: dict) -> dict:
    """``data`` as fhir.resources reads it back (raises pydantic's ValidationError where it breaks R4)."""
    return Bundle.model_validate(data).model_dump(mode="json", exclude_none=True, by_alias=True)


def case_bundle(case: Case, absolute, kind: str = "collection") -> dict:
    builder = Builder(absolute)
    builder.case(case)
    return builder.bundle(kind)


def visit_bundle(cases, absolute, kind: str = "collection") -> dict:
    """The images of one lesion taken on one day (a visit), with their results."""
    builder = Builder(absolute)
    for case in cases:
        builder.case(case)
    return builder.bundle(kind)


def visit_cases(lesion, day: datetime.date):
    cases = lesion.cases.with_related().order_by("taken_at", "pk")
    return [c for c in cases if timezone.localdate(c.taken_at) == day]


class PushFailed(Exception):
    """The FHIR server refused the bundle (a 4xx other than 429): sending it again will not help."""


class PushRetry(Exception):
    """The FHIR server could not be reached, timed out, was busy (429) or failed (5xx): try later."""


def push(bundle: dict, endpoint: str, authorization: str = "", timeout: float = 30.0) -> int:
    """POST a transaction bundle to a FHIR server's base URL; its HTTP status, or PushFailed/PushRetry."""
    if not endpoint.startswith(("https://", "http://")):  # and so urlopen below opens no file: or ftp: URL
        raise PushFailed(f"FHIR_ENDPOINT must be an http(s) URL, not {endpoint!r}")
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(endpoint, data=json.dumps(bundle).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # nosec B310
            return answer.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode(errors="replace")
        if exc.code == 429 or exc.code >= 500:
            raise PushRetry(f"{exc.code}: {detail}") from None
        raise PushFailed(f"{exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise PushRetry(str(getattr(exc, "reason", exc))) from None
