"""The REST API (version 1): the pages' records and rules for programs — a dermatoscope's bridge, an
electronic record, a script. Access is the pages' own: every record is fetched through its clinic's
scope (another clinic's record and a missing one are both 404), the administrators' actions are the
administrators', and every call is audited and throttled (``Guarded``)."""

import json
import re

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import HttpResponse
from django.utils.translation import gettext
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from PIL import Image
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from skinweb.accounts.ip import client_ip
from skinweb.api import serializers as s
from skinweb.api.models import ApiToken
from skinweb.api.pages import tokens_for
from skinweb.api.permissions import NoReferrers
from skinweb.audit.models import AuditEvent, record
from skinweb.clinic import fhir, insights, reports
from skinweb.clinic import views as pages
from skinweb.clinic.forms import CaseFilterForm
from skinweb.clinic.models import Case, Lesion, Patient


def exception_handler(exc, context):
    """DRF's answers, and a model rule broken (Django's ValidationError) as a 400, never a 500."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages})
    return drf_exception_handler(exc, context)


def fhir_response(bundle: dict) -> HttpResponse:
    response = HttpResponse(json.dumps(bundle), content_type=fhir.FHIR_JSON)
    response["Cache-Control"] = "private, no-store"
    return response


class JSONErrors(DefaultContentNegotiation):
    """A download's errors come as JSON whatever the client accepts (the download itself is a file)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class InClinic(NoReferrers):
    """Creating clinical records needs a clinic to put them in (the platform administrator has none)."""

    def has_permission(self, request, view):
        if not request.user.is_authenticated or not super().has_permission(request, view):
            self.message = NoReferrers.message
            return False
        self.message = "Your account belongs to no clinic: there is nothing to create records in."
        return view.action != "create" or getattr(request.user, "clinic_id", None) is not None


class AdministratorsOnly(BasePermission):
    message = "Administrators only."

    def has_permission(self, request, view):
        return request.user.is_platform_admin or request.user.is_clinic_admin


class Guarded:
    """Every call is throttled and leaves an audit event.

    Throttling: a caller that does not authenticate (no token, a wrong or expired one) is counted per
    address before it is refused (DRF would refuse it first and count nothing); a user per user
    (settings: UserRateThrottle). Audit: who (and with which token), what, the answer; on the record it
    touched when there is one (its clinic's administrator reads it in their trail), else the caller."""

    audit_object = None

    def initial(self, request, *args, **kwargs):
        failure = None
        try:
            anonymous = not request.user.is_authenticated
        except exceptions.APIException as exc:
            failure, anonymous = exc, True
        if anonymous:
            throttle = AnonRateThrottle()
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())
        if failure is not None:
            raise failure
        super().initial(request, *args, **kwargs)
        repeated = [name for name, values in request.query_params.lists() if len(values) > 1]
        if repeated:  # which one would count? Neither: say so.
            raise exceptions.ValidationError({name: [gettext("Give this parameter once.")] for name in repeated})

    def get_object(self):
        if self.lookup_field == "pk":
            value = str(self.kwargs.get("pk", ""))
            # Not an ID ("²" is a digit to str.isdigit), or larger than any: no record, and the database
            # must not be asked (it cannot compare such a number).
            if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) > s.MAX_ID:
                raise exceptions.NotFound()
        self.audit_object = super().get_object()
        return self.audit_object

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        detail = {"method": request.method, "path": request.path[:200], "status": response.status_code}
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            token = getattr(request, "auth", None)
            if isinstance(token, ApiToken):
                detail["token"] = token.token_key
            record(request, "api", self.audit_object or user, **detail)
        elif response.status_code != status.HTTP_429_TOO_MANY_REQUESTS:  # a flood is throttled, not logged
            AuditEvent.objects.create(action="api", object_type="api", object_id="", detail=detail,
                                      ip=client_ip(request))
        return response


class ClinicRecords(Guarded):
    """A clinical model's rows the caller may see: their clinic's (settings: authenticated only)."""

    model = None
    permission_classes = [InClinic]

    def get_queryset(self):
        return self.model.objects.visible_to(self.request.user)

    def get_permissions(self):
        return [IsAuthenticated(), *super().get_permissions()]


class WritableRecords(ClinicRecords, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                      mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """List, read, create and correct; nothing clinical is deleted through the API (the pages' removal
    of a mistaken image is kept for the pages, with its reason)."""

    http_method_names = ["get", "post", "patch", "head", "options"]

    def perform_update(self, serializer):
        obj = serializer.instance
        old = {f: str(getattr(obj, f)) for f in serializer.validated_data}
        serializer.save()
        changes = {f: [old[f], str(getattr(obj, f))] for f in old if old[f] != str(getattr(obj, f))}
        if changes:
            record(self.request, "update", obj, changes=changes)


def filters(view, serializer_class) -> dict:
    """A list's query filters, checked (400 with a message for a wrong value)."""
    if view.action != "list":
        return {}
    # A plain dict: read as a form (a QueryDict), an empty value would pass as "no filter".
    form = serializer_class(data=view.request.query_params.dict())
    form.is_valid(raise_exception=True)
    return form.validated_data


@extend_schema_view(list=extend_schema(parameters=[s.PatientFilters]))
class PatientViewSet(WritableRecords):
    """Your clinic's patients (pseudonymous identifiers, no names)."""

    model = Patient
    serializer_class = s.PatientSerializer

    def get_queryset(self):
        patients = super().get_queryset().prefetch_related("lesions").order_by("identifier", "pk")
        wanted = filters(self, s.PatientFilters)
        return patients.filter(identifier__icontains=wanted["identifier"]) if wanted.get("identifier") else patients

    def perform_create(self, serializer):
        self.audit_object = serializer.save(clinic=self.request.user.clinic, created_by=self.request.user)
        record(self.request, "create", self.audit_object)


@extend_schema_view(list=extend_schema(parameters=[s.LesionFilters]))
class LesionViewSet(WritableRecords):
    """Lesions of your clinic's patients, each with its images (cases) and visits."""

    model = Lesion
    serializer_class = s.LesionSerializer

    def get_queryset(self):
        lesions = super().get_queryset().prefetch_related("cases").order_by("pk")
        wanted = filters(self, s.LesionFilters)
        return lesions.filter(patient_id=wanted["patient"]) if "patient" in wanted else lesions

    def perform_create(self, serializer):
        self.audit_object = serializer.save(created_by=self.request.user)
        record(self.request, "create", self.audit_object, patient=self.audit_object.patient_id)

    @extend_schema(responses=s.VisitSerializer(many=True))
    @action(detail=True, pagination_class=None)
    def visits(self, request, pk=None):
        """The lesion's visits in date order: the images taken on one day, with their results."""
        lesion = self.get_object()
        cases = lesion.cases.with_related().order_by("taken_at", "pk")
        return Response(s.VisitSerializer(insights.visits_of(cases), many=True).data)

    @extend_schema(request={"multipart/form-data": s.UploadSerializer},
                   responses={201: s.UploadResultSerializer, 400: s.UploadResultSerializer})
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser])
    def images(self, request, pk=None):
        """Upload dermoscopic images of the lesion (multipart, field ``images``, one or more): each good
        one becomes a case queued for classification; each bad one is refused with its reason and
        nothing of it is stored (the web form's checks and limits). 400 when none was accepted."""
        lesion = self.get_object()
        form = s.UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        accepted, rejected = [], []
        for upload in form.validated_data["images"]:
            try:
                accepted.append(pages.store_upload(request, lesion, upload))
            except DjangoValidationError as exc:
                rejected.append({"name": upload.name, "error": exc.messages[0]})
        cases = Case.objects.with_related().filter(pk__in=[c.pk for c in accepted]).order_by("pk")
        body = {"cases": s.CaseSerializer(cases, many=True).data, "rejected": rejected}
        return Response(body, status=status.HTTP_201_CREATED if accepted else status.HTTP_400_BAD_REQUEST)

    @extend_schema(parameters=[s.VisitQuery], responses={(200, "application/fhir+json"): OpenApiTypes.OBJECT})
    @action(detail=True, url_path="visit-fhir", content_negotiation_class=JSONErrors)
    def visit_fhir(self, request, pk=None):
        """A visit of the lesion (its images taken on ``date``) as a FHIR R4 Bundle (collection)."""
        lesion = self.get_object()
        query = s.VisitQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        cases = fhir.visit_cases(lesion, query.validated_data["date"])
        if not cases:
            raise exceptions.NotFound(gettext("The lesion has no image taken on that day."))
        record(request, "export_fhir", lesion, date=str(query.validated_data["date"]), cases=[c.pk for c in cases])
        return fhir_response(fhir.visit_bundle(cases, request.build_absolute_uri))


@extend_schema_view(list=extend_schema(parameters=[s.CaseFilters]))
class CaseViewSet(ClinicRecords, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your clinic's cases, newest first: status while queued or running, then the result (probability,
    decision at the stated threshold, borderline band, model version, differential), the current
    feedback and the ground truth. Poll a case until its status is done or failed."""

    model = Case
    serializer_class = s.CaseSerializer

    def get_queryset(self):
        cases = super().get_queryset().with_related()
        wanted = filters(self, s.CaseFilters)
        cases = CaseFilterForm(wanted).filter(cases)  # the history page's filters, same meaning
        return cases.filter(lesion_id=wanted["lesion"]) if "lesion" in wanted else cases

    @extend_schema(methods=["get"], responses=s.FeedbackSerializer(many=True))
    @extend_schema(methods=["post"], request=s.FeedbackSerializer, responses={201: s.FeedbackSerializer})
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def feedback(self, request, pk=None):
        """GET: the feedback's revisions, newest first. POST: record feedback (agreement, clinical
        diagnosis, management, later the histopathology result), as a new revision."""
        case = self.get_object()
        if request.method == "GET":
            return Response(s.FeedbackSerializer(case.feedback_history.select_related("created_by"), many=True).data)
        form = s.FeedbackSerializer(data=request.data, context={"case": case})
        form.is_valid(raise_exception=True)
        feedback = case.record_feedback(request.user, **form.validated_data)
        record(request, "feedback", case, revision=feedback.revision)
        return Response(s.FeedbackSerializer(feedback).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.TruthSerializer, responses=s.TruthReadSerializer)
    @action(detail=True, methods=["post"], permission_classes=[AdministratorsOnly])
    def truth(self, request, pk=None):
        """Set (or withdraw) the ground truth and its source and whether the case teaches the model:
        your clinic's administrators, as in the relabel queue."""
        case = self.get_object()
        form = s.TruthSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        with transaction.atomic():
            old, new = case.relabel(request.user, data["label"], data["source"], data.get("use_for_training"))
            record(request, "relabel", case, old=old, new=new)
        return Response(s.TruthReadSerializer(case).data)

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    @action(detail=True, url_path="report", content_negotiation_class=JSONErrors)
    def report(self, request, pk=None):
        """The case's one-page PDF report."""
        case = self.get_object()
        try:
            pdf = reports.case_pdf(case, request.user)
        except (OSError, Image.DecompressionBombError):
            raise exceptions.NotFound(
                gettext("The report could not be made: the stored image cannot be read.")) from None
        record(request, "export_pdf", case)
        response = HttpResponse(pdf, content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="skinweb-case-{case.pk}.pdf"'
        response["Cache-Control"] = "private, no-store"
        return response

    @extend_schema(responses={(200, "application/fhir+json"): OpenApiTypes.OBJECT})
    @action(detail=True, content_negotiation_class=JSONErrors)
    def fhir(self, request, pk=None):
        """The case as a FHIR R4 Bundle (collection): Patient, the model as a Device, the image as Media,
        the result as Observations gathered by a DiagnosticReport, the PDF as a DocumentReference."""
        case = self.get_object()
        record(request, "export_fhir", case)
        return fhir_response(fhir.case_bundle(case, request.build_absolute_uri))

    @extend_schema(responses={(200, "application/dicom"): OpenApiTypes.BINARY})
    @action(detail=True, content_negotiation_class=JSONErrors)
    def dicom(self, request, pk=None):
        """The case's image with its result as a DICOM file (VL Photographic Image, uncompressed)."""
        case = self.get_object()
        try:
            return pages.dicom_response(request, case)
        except pages.Http404 as exc:
            raise exceptions.NotFound(str(exc)) from None

    @extend_schema(responses={(200, "image/jpeg"): OpenApiTypes.BINARY, (200, "image/png"): OpenApiTypes.BINARY},
                   parameters=[OpenApiParameter("size", str, enum=["thumb"])])
    @action(detail=True, content_negotiation_class=JSONErrors)
    def image(self, request, pk=None):
        """The stored image (metadata stripped at upload); ``?size=thumb`` its thumbnail."""
        case = self.get_object()
        try:
            return pages.image_response(request, case)
        except pages.Http404 as exc:
            raise exceptions.NotFound(str(exc)) from None


    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY})
    @action(detail=True, content_negotiation_class=JSONErrors)
    def heatmap(self, request, pk=None):
        """The Grad-CAM overlay of the case's result (a transparent PNG the size of the image), once made."""
        case = self.get_object()
        try:
            return pages.heatmap_response(case)
        except pages.Http404 as exc:
            raise exceptions.NotFound(str(exc)) from None


class DicomViewSet(Guarded, viewsets.ViewSet):
    """DICOM import: each file becomes a case, its patient matched by Patient ID or created."""

    permission_classes = [IsAuthenticated, InClinic]
    parser_classes = [MultiPartParser]

    @extend_schema(request={"multipart/form-data": s.DicomImportSerializer},
                   responses={201: s.UploadResultSerializer, 400: s.UploadResultSerializer})
    def create(self, request):
        """Import DICOM files (multipart, field ``files``): each good one becomes a case queued for
        classification, into ``lesion`` when given, else a new lesion per patient, series and site; each
        refused one is listed with its reason and nothing of it is stored. 400 when none was accepted."""
        form = s.DicomImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        lesion = None
        if "lesion" in data:
            lesion = Lesion.objects.visible_to(request.user).filter(pk=data["lesion"]).first()
            if lesion is None:
                raise exceptions.ValidationError({"lesion": [gettext("No such lesion in your clinic.")]})
        accepted, rejected = pages.store_dicom(request, data["files"], site=data.get("site"), lesion=lesion)
        cases = Case.objects.with_related().filter(pk__in=[c.pk for c in accepted]).order_by("pk")
        body = {"cases": s.CaseSerializer(cases, many=True).data,
                "rejected": [{"name": name, "error": error} for name, error in rejected]}
        return Response(body, status=status.HTTP_201_CREATED if accepted else status.HTTP_400_BAD_REQUEST)


class TokenViewSet(Guarded, mixins.ListModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """API tokens: your own; a clinic administrator also sees and revokes those of their clinic's users,
    the platform administrator everyone's. Tokens are made on the API tokens page (shown once)."""

    serializer_class = s.TokenSerializer
    lookup_field = "token_key"
    lookup_value_regex = "[A-Za-z0-9_]+"

    def get_queryset(self):
        return tokens_for(self.request.user)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        """Revoke a token: it stops working at once."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, token):
        record(self.request, "revoke_token", token.user, token=token.token_key, name=token.name)
        self.audit_object = token.user
        token.delete()



@extend_schema(exclude=True)
class NoSuchRoute(Guarded, APIView):
    """Anything else under /api/: a JSON 404 (not the pages' HTML one), audited and throttled like the rest."""

    def get(self, request, *args, **kwargs):
        raise exceptions.NotFound(gettext("No such API route: the routes are listed at /api/docs/."))

    post = put = patch = delete = head = get


class ReferralViewSet(Guarded, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Referrals (the pages' own rules, skinweb.referrals): a clinic's members list their clinic's open referrals
    in triage order (``?state=all``: every referral, newest first) and answer them; a referring practice's users
    list their practice's referrals and send new ones (multipart: the form's fields and ``images``). Each as FHIR
    R4: ``/fhir/``."""

    permission_classes = [IsAuthenticated]  # referrers too (NoReferrers guards every other route)
    serializer_class = s.ReferralSerializer
    parser_classes = [JSONParser, MultiPartParser]

    def get_queryset(self):
        from skinweb.referrals.models import Referral

        user = self.request.user
        referrals = Referral.objects.visible_to(user).select_related("practice", "clinic", "lesion")
        referrals = referrals.prefetch_related("answers__created_by", "lesion__cases")
        if self.action == "list" and user.clinic_id is not None and self.request.query_params.get("state") != "all":
            return referrals.open().triage_order()
        return referrals.order_by("-created_at", "-pk")

    @extend_schema(request={"multipart/form-data": OpenApiTypes.OBJECT}, responses={201: s.ReferralSerializer})
    def create(self, request):
        """A referring practice's new referral: the form's fields, ``images`` (one or more files) and optionally
        ``overview``; each file checked as an upload is, one bad file refuses the whole referral."""
        from skinweb.referrals.forms import ReferralForm
        from skinweb.referrals.views import checked_submission

        if not request.user.is_referrer:
            raise exceptions.PermissionDenied(gettext("Referring practices only."))
        files = {"images": request.FILES.getlist("images"), "overview": request.FILES.get("overview")}
        form = ReferralForm(request.data, files, practice=request.user.practice)
        referral = checked_submission(request, form, request.user.practice) if form.is_valid() else None
        if referral is None:
            raise exceptions.ValidationError({k: [str(m) for m in v] for k, v in form.errors.items()})
        self.audit_object = referral
        return Response(s.ReferralSerializer(referral, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ReferralAnswerInputSerializer, responses=s.ReferralSerializer)
    @action(detail=True, methods=["post"])
    def answer(self, request, pk=None):
        """The receiving clinic's dermatologist answers: ``action`` (book_urgent, book_routine, return,
        more_images) and the ``message`` the practice reads."""
        from skinweb.referrals.forms import AnswerForm
        from skinweb.referrals.views import record_answer

        referral = self.get_object()
        if request.user.clinic_id is None:
            raise exceptions.PermissionDenied(gettext("Members of the receiving clinic only."))
        form = s.ReferralAnswerInputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        form = AnswerForm(form.validated_data)
        if not form.is_valid():
            raise exceptions.ValidationError({k: [str(m) for m in v] for k, v in form.errors.items()})
        if record_answer(request, referral, form.cleaned_data) is None:
            raise exceptions.ValidationError({"action": [gettext("This referral has been answered already.")]})
        referral = type(referral).objects.get(pk=referral.pk)  # as it is now (answers were prefetched)
        return Response(s.ReferralSerializer(referral, context={"request": request}).data)

    @extend_schema(request={"multipart/form-data": OpenApiTypes.OBJECT}, responses=s.ReferralSerializer)
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser])
    def images(self, request, pk=None):
        """The referring practice sends the better images the clinic asked for (``images``, one or more files;
        ``note``): checked as the form's, the referral is back in the clinic's list."""
        from skinweb.referrals.forms import MoreImagesForm
        from skinweb.referrals.models import Referral
        from skinweb.referrals.views import add_images

        referral = self.get_object()
        if not request.user.is_referrer:
            raise exceptions.PermissionDenied(gettext("Referring practices only."))
        if referral.status != Referral.Status.MORE_IMAGES:
            raise exceptions.ValidationError({"images": [gettext("The clinic has not asked for more images of this "
                                                                 "referral.")]})
        form = MoreImagesForm(request.data, {"images": request.FILES.getlist("images")})
        if not add_images(request, referral, form):
            raise exceptions.ValidationError({k: [str(m) for m in v] for k, v in form.errors.items()})
        referral = Referral.objects.get(pk=referral.pk)  # its images as they are now (the list was prefetched)
        return Response(s.ReferralSerializer(referral, context={"request": request}).data)

    @extend_schema(responses={(200, "application/fhir+json"): OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"], content_negotiation_class=JSONErrors)
    def fhir(self, request, pk=None):
        """FHIR R4 Bundle: the ServiceRequest, its images (Media), the checklist, the triage Task and the answers
        (Communication); with each image's AI record for the clinic's members."""
        from skinweb.referrals.fhir import referral_bundle

        referral = self.get_object()
        record(request, "export_fhir", referral)
        return fhir_response(referral_bundle(referral, request.build_absolute_uri,
                                             with_ai=request.user.clinic_id is not None))
