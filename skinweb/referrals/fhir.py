"""A referral as FHIR R4: a ServiceRequest (the practice asks the clinic's dermatology service to review a
lesion), its dermoscopic images as Media, the weighted 7-point checklist as an Observation, the practice and
the clinic as Organizations, the triage as a Task and each answer as a Communication to the practice.

The clinic's bundle also carries each image's AI record (skinweb.clinic.fhir: DiagnosticReport, Observations,
the PDF); the practice's does not (the practice never sees the AI's figures), and its images link to the
referral pages it may open."""

from django.urls import reverse

from skinweb.clinic import fhir as clinic_fhir
from skinweb.clinic.fhir import SNOMED, SYSTEM, body_site, identifier, ref, text_concept, when
from skinweb.referrals.models import MAJOR_FEATURES, MINOR_FEATURES, Referral

# Task.status for each referral state; the state itself goes in Task.businessStatus.
TASK_STATUS = {Referral.Status.OPEN: "requested", Referral.Status.MORE_IMAGES: "on-hold",
               Referral.Status.BOOKED_URGENT: "completed", Referral.Status.BOOKED_ROUTINE: "completed",
               Referral.Status.RETURNED: "completed"}
REQUEST_STATUS = {Referral.Status.OPEN: "active", Referral.Status.MORE_IMAGES: "on-hold",
                  Referral.Status.BOOKED_URGENT: "active", Referral.Status.BOOKED_ROUTINE: "active",
                  Referral.Status.RETURNED: "completed"}


class ReferralBuilder(clinic_fhir.Builder):
    def organization(self, kind: str, pk: int, name: str) -> dict:
        return self.add({"resourceType": "Organization", "id": ref("Organization", kind, pk),
                         "identifier": [identifier(f"{kind}", pk)], "name": name})

    def image(self, case, subject, site) -> dict:
        """The image alone, as the practice sees it (no AI record), linked to the referral page's copy."""
        return self.add({
            "resourceType": "Media", "id": ref("Media", case.pk), "identifier": [identifier("Media", case.pk)],
            "status": "completed",
            "type": text_concept("http://terminology.hl7.org/CodeSystem/media-type", "image", "Image"),
            "modality": {"text": "Dermoscopy"}, "subject": subject, "createdDateTime": when(case.taken_at),
            "bodySite": site, "height": case.height or None, "width": case.width or None,
            "content": {"contentType": "image/png" if case.image.name.endswith(".png") else "image/jpeg",
                        "url": self.absolute(reverse("referrals:image", args=[case.lesion.referral.pk, case.pk])),
                        "title": f"Dermoscopic image {case.pk} of referral {case.lesion.referral.pk}"},
        })

    def referral(self, referral: Referral, with_ai: bool) -> None:
        lesion = referral.lesion
        subject = self.patient(lesion.patient)
        site = body_site(lesion.site, "")
        practice = self.organization("practice", referral.practice_id, referral.practice.name)
        clinic = self.organization("clinic", referral.clinic_id, referral.clinic.name)
        media = []
        for case in lesion.cases.with_related().order_by("created_at", "pk"):
            if with_ai:
                self.case(case)
                media.append({"reference": f"urn:uuid:{ref('Media', case.pk)}"})
            else:
                media.append(self.image(case, subject, site))
        checklist = self.add({
            "resourceType": "Observation", "id": ref("Observation", "referral", referral.pk, "checklist"),
            "identifier": [identifier("Observation", "referral", referral.pk, "checklist")],
            "status": "final", "subject": subject, "effectiveDateTime": when(referral.created_at),
            "code": text_concept(SYSTEM + ":observation", "weighted-7-point-checklist",
                                 "Weighted 7-point checklist score (NICE NG12)"),
            "valueInteger": referral.checklist_score,
            "component": [{"code": {"text": str(label)}, "valueBoolean": getattr(referral, field)}
                          for field, label in MAJOR_FEATURES + MINOR_FEATURES]
            + [{"code": {"text": "noticed for (months)"}, "valueInteger": referral.duration_months}],
        })
        request_id = ref("ServiceRequest", referral.pk)
        service_request = self.add({
            "resourceType": "ServiceRequest", "id": request_id, "identifier": [identifier("ServiceRequest",
                                                                                          referral.pk)],
            "status": REQUEST_STATUS[referral.status], "intent": "order",
            "priority": "urgent" if referral.urgency == Referral.Urgency.URGENT else "routine",
            "category": [text_concept(SNOMED, "306241000", "Referral to dermatology service")],
            "code": {"text": "Review of a skin lesion (teledermatology, dermoscopic images)"},
            "subject": subject, "authoredOn": when(referral.created_at), "requester": practice,
            "performer": [clinic], "bodySite": [site], "supportingInfo": [checklist, *media],
            "note": [{"text": referral.history}] if referral.history else None,
        })
        self.add({
            "resourceType": "Task", "id": ref("Task", "referral", referral.pk),
            "identifier": [identifier("Task", "referral", referral.pk)],
            "status": TASK_STATUS[referral.status], "intent": "order",
            "businessStatus": {"text": referral.get_status_display()},
            "code": {"text": "Triage the referral"}, "focus": service_request, "for": subject,
            "authoredOn": when(referral.created_at), "lastModified": when(referral.answered_at or
                                                                         referral.created_at),
            "requester": practice, "owner": clinic,
        })
        for answer in referral.answers.all():
            self.add({
                "resourceType": "Communication", "id": ref("Communication", "answer", answer.pk),
                "identifier": [identifier("Communication", "answer", answer.pk)],
                "status": "completed", "basedOn": [service_request], "subject": subject,
                "topic": {"text": answer.get_action_display()}, "sent": when(answer.created_at),
                "sender": clinic, "recipient": [practice],
                "payload": [{"contentString": answer.message}],
            })


def referral_bundle(referral: Referral, absolute, with_ai: bool) -> dict:
    builder = ReferralBuilder(absolute)
    builder.referral(referral, with_ai)
    return builder.bundle("collection")
