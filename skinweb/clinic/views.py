import datetime
import io

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Max, Prefetch, Q
from django.http import FileResponse, Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from PIL import Image

from skinweb.audit.models import record
from skinweb.clinic import dicom, insights, reports, similar, tasks
from skinweb.clinic.access import get_for_user, object_view
from skinweb.clinic.forms import (
    CaseFilterForm,
    DicomImportForm,
    FeedbackForm,
    LesionForm,
    PatientForm,
    RemovalForm,
    TakenForm,
    UploadForm,
)
from skinweb.clinic.models import Case, Lesion, Patient
from skinweb.clinic.uploads import THUMBNAIL_SIDE, normalise_image
from skinweb.models_registry.models import ModelVersion
from skinweb.referrals.models import Referral

PAGE_SIZE = 25


NO_MODEL_BANNER = _(
    "No model is published yet: images are stored, but they cannot be classified until an administrator "
    "trains a model (python -m classifier.training.train) and publishes it (python manage.py publish_model FILE)."
)


def _no_model_warning(request):
    if ModelVersion.objects.published() is None:
        messages.warning(request, NO_MODEL_BANNER)


@require_GET
def dashboard(request):
    """The clinic's home page: what waits for review, the latest results, and how the AI and the
    clinicians compare with histopathology on this clinic's own confirmed cases, per model version."""
    _no_model_warning(request)
    cases = Case.objects.visible_to(request.user)
    waiting = cases.awaiting_review().with_related().by_risk()
    context = {
        "waiting": waiting[:10],
        "n_waiting": waiting.count(),
        "recent": cases.filter(status=Case.Status.DONE).with_related().order_by("-finished_at", "-pk")[:8],
        "n_in_progress": cases.filter(status__in=[Case.Status.QUEUED, Case.Status.RUNNING]).count(),
        "n_failed": cases.filter(status=Case.Status.FAILED).count(),
        "versions": insights.agreement_by_version(cases),
        "published": ModelVersion.objects.published(),
        "n_referrals": Referral.objects.filter(clinic_id=request.user.clinic_id).open().count()
        if request.user.clinic_id else 0,
    }
    return render(request, "clinic/dashboard.html", context)


@require_GET
def case_list(request):
    _no_model_warning(request)
    form = CaseFilterForm(request.GET)
    cases = form.filter(Case.objects.visible_to(request.user).with_related())
    page = Paginator(cases, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    patient = None
    if form.is_valid() and form.cleaned_data["patient"]:
        patient = Patient.objects.visible_to(request.user).filter(pk=form.cleaned_data["patient"]).first()
    return render(
        request,
        "clinic/case_list.html",
        {"form": form, "page": page, "query": query.urlencode(), "patient": patient},
    )


@require_GET
def patient_list(request):
    q = request.GET.get("q", "").strip()
    in_use = Q(lesions__cases__removed_at__isnull=True)  # joins do not go through Case.objects
    patients = Patient.objects.visible_to(request.user).annotate(
        n_lesions=Count("lesions", distinct=True),
        n_cases=Count("lesions__cases", filter=in_use),
        last_case=Max("lesions__cases__created_at", filter=in_use),
    ).order_by("identifier")
    if q:
        patients = patients.filter(identifier__icontains=q)
    page = Paginator(patients, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "clinic/patient_list.html", {"page": page, "q": q})


@require_http_methods(["GET", "POST"])
def patient_create(request):
    if request.user.clinic_id is None:
        return render(request, "clinic/no_clinic.html", status=403)
    form = PatientForm(request.POST if request.method == "POST" else None, clinic=request.user.clinic)
    if request.method == "POST" and form.is_valid():
        patient = form.save(commit=False)
        patient.clinic = request.user.clinic
        patient.created_by = request.user
        patient.save()
        record(request, "create", patient)
        messages.success(request, gettext("Patient %(identifier)s created. Now add a lesion.")
                         % {"identifier": patient.identifier})
        return redirect("clinic:lesion_create", pk=patient.pk)
    return render(request, "clinic/patient_form.html", {"form": form})


@object_view(Patient)
def patient_detail(request, patient):
    """The patient's lesions, each with its images in visit order and their results. The list
    refreshes itself (``?part=lesions``): every 2 s while a result is pending, else every 30 s, so
    images uploaded elsewhere (another tab, a colleague) appear without a reload."""
    cases = Case.objects.select_related("prediction__model_version", "feedback").order_by("taken_at", "pk")
    lesions = list(patient.lesions.prefetch_related(Prefetch("cases", queryset=cases)))
    context = {"patient": patient, "lesions": lesions,
               "pending": any(c.is_pending for lesion in lesions for c in lesion.cases.all())}
    if request.GET.get("part") == "lesions":
        return render(request, "clinic/partials/patient_lesions.html", context)
    record(request, "view", patient)
    return render(request, "clinic/patient_detail.html", context)


def _save_correction(request, form, obj, message) -> None:
    """Save a valid ModelForm that corrects ``obj``; audited as {field: [old, new]} (nothing when nothing changed)."""
    if form.has_changed():
        changes = {n: [str(form.initial.get(n, "")), str(form.cleaned_data.get(n, ""))] for n in form.changed_data}
        form.save()
        record(request, "update", obj, changes=changes)
        messages.success(request, message)


@object_view(Patient, methods=("GET", "POST"))
def patient_edit(request, patient):
    """Correct a patient's details (identifier, birth year, sex); audited with old and new values."""
    form = PatientForm(request.POST if request.method == "POST" else None, instance=patient, clinic=patient.clinic)
    if request.method == "POST" and form.is_valid():
        _save_correction(request, form, patient, gettext("Patient details corrected."))
        return redirect("clinic:patient_detail", pk=patient.pk)
    return render(request, "clinic/patient_form.html", {"form": form, "patient": patient})


@object_view(Lesion, methods=("GET", "POST"))
def lesion_edit(request, lesion):
    """Correct a lesion's site or label; audited with old and new values."""
    form = LesionForm(request.POST if request.method == "POST" else None, instance=lesion)
    if request.method == "POST" and form.is_valid():
        _save_correction(request, form, lesion, gettext("Lesion details corrected."))
        return redirect("clinic:lesion_detail", pk=lesion.pk)
    return render(request, "clinic/lesion_form.html", {"form": form, "patient": lesion.patient, "lesion": lesion})


@object_view(Patient, methods=("GET", "POST"))
def lesion_create(request, patient):
    form = LesionForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        lesion = form.save(commit=False)
        lesion.patient = patient
        lesion.created_by = request.user
        lesion.save()
        record(request, "create", lesion, patient=patient.pk)
        messages.success(request, gettext("Lesion recorded. Upload its dermoscopic images."))
        return redirect("clinic:lesion_detail", pk=lesion.pk)
    return render(request, "clinic/lesion_form.html", {"form": form, "patient": patient})


def _lesion_page(request, lesion, form, status=200, template="clinic/lesion_detail.html"):
    cases = lesion.cases.select_related("prediction__model_version", "feedback").order_by("taken_at", "pk")
    context = {"lesion": lesion, "timeline": insights.timeline(cases), "form": form}
    return render(request, template, context, status=status)


@object_view(Lesion)
def lesion_detail(request, lesion):
    """The lesion's timeline: its visits side by side in date order, the probability trend, the
    feedback of each visit, rises flagged; and the upload form for a new visit."""
    if request.GET.get("part") == "timeline":  # polled while images are pending, and after each upload
        return _lesion_page(request, lesion, None, template="clinic/partials/lesion_timeline.html")
    _no_model_warning(request)
    record(request, "view", lesion)
    return _lesion_page(request, lesion, UploadForm())


@object_view(Lesion, methods=("GET", "POST"))
def lesion_upload(request, lesion):
    """Each good image becomes a case queued for classification; each bad one gets a message."""
    form = UploadForm(request.POST, request.FILES) if request.method == "POST" else UploadForm()
    wants_json = "application/json" in request.headers.get("Accept", "")
    if request.method == "POST" and wants_json:
        return _upload_json(request, lesion, form)
    if request.method == "POST" and form.is_valid():
        accepted, rejected = [], []
        for upload in form.cleaned_data["images"]:
            try:
                case = store_upload(request, lesion, upload)
            except ValidationError as exc:
                rejected.append(f"{upload.name}: {exc.messages[0]}")
                continue
            accepted.append(case)
        if accepted:
            names = ", ".join(c.original_name for c in accepted)
            messages.success(request, ngettext("%(n)d image uploaded and queued for classification: %(names)s.",
                                               "%(n)d images uploaded and queued for classification: %(names)s.",
                                               len(accepted)) % {"n": len(accepted), "names": names})
        if not rejected:
            return redirect("clinic:case_detail", pk=accepted[0].pk) if len(accepted) == 1 else redirect(
                "clinic:lesion_detail", pk=lesion.pk
            )
        for message in rejected:
            form.add_error("images", message)
    return _lesion_page(request, lesion, form)


def store_upload(request, lesion, upload) -> Case:
    """Store one checked image as a case and queue it (raises ValidationError for a bad image); the
    page, its uploader and the API all come here."""
    image = normalise_image(upload)
    with transaction.atomic():
        case = lesion.add_image(request.user, upload.name, image)
        record(request, "upload", case, lesion=lesion.pk, sha256=case.sha256,
               uploaded_size=list(image.original_size), stored_size=[case.width, case.height])
        tasks.enqueue(case.pk)
    return case


def store_dicom(request, uploads, site=None, lesion=None) -> tuple[list[Case], list[tuple[str, str]]]:
    """Each DICOM file (skinweb.clinic.dicom) becomes a case queued for classification: the patient
    matched by Patient ID in the user's clinic or created from the file, into ``lesion`` when given,
    else a new lesion per patient, series and site (``site``, else the file's anatomic region). Returns
    the cases and the refused files with their reasons; a refused file leaves nothing behind."""
    made: dict[tuple, Lesion] = {}
    accepted, rejected = [], []
    for upload in uploads:
        try:
            found = dicom.read(upload)
            with transaction.atomic():
                target, key = _dicom_lesion(request, found, site, lesion, made)
                image = found.image
                case = target.add_image(request.user, upload.name, image)
                record(request, "import_dicom", case, lesion=target.pk, sha256=case.sha256,
                       uploaded_size=list(image.original_size), stored_size=[case.width, case.height])
                tasks.enqueue(case.pk)
        except ValidationError as exc:
            rejected.append((upload.name, exc.messages[0]))
            continue
        made[key] = target
        accepted.append(case)
    return accepted, rejected


def _dicom_lesion(request, found, site, lesion, made):
    clinic, pid = request.user.clinic, found.patient_id
    patient = Patient.objects.filter(clinic=clinic, identifier__iexact=pid).first()
    if lesion is not None:
        if patient is None or patient.pk != lesion.patient_id:
            raise ValidationError(gettext("The file's patient (%(pid)s) is not this lesion's (%(identifier)s).") % {
                "pid": pid, "identifier": lesion.patient.identifier})
        return lesion, None
    if patient is None:
        if found.birth_year is None:
            raise ValidationError(gettext("Your clinic has no patient %(pid)s, and the file gives no birth date to "
                                          "create one: create the patient first.") % {"pid": pid})
        form = PatientForm({"identifier": pid, "birth_year": found.birth_year, "sex": found.sex}, clinic=clinic)
        if not form.is_valid():
            raise ValidationError(gettext("Patient %(pid)s: %(errors)s") % {
                "pid": pid, "errors": " ".join(m for ms in form.errors.values() for m in ms)})
        patient = form.save(commit=False)
        patient.clinic, patient.created_by = clinic, request.user
        patient.save()
        record(request, "create", patient, source="dicom")
    where = site or found.site
    if not where:
        raise ValidationError(gettext("The file's anatomic region is not one of the lesion sites: choose the site."))
    key = (patient.pk, found.series, where)
    if key in made:
        return made[key], key
    new = Lesion.objects.create(patient=patient, site=where, label="Imported from DICOM", created_by=request.user)
    record(request, "create", new, patient=patient.pk, source="dicom")
    return new, key


@require_http_methods(["GET", "POST"])
def dicom_import(request):
    """Import DICOM files (a dermatoscope's export, the ISIC Archive's): each becomes a case."""
    if request.user.clinic_id is None:
        return render(request, "clinic/no_clinic.html", status=403)
    form = DicomImportForm(request.POST or None, request.FILES or None)
    accepted, rejected = [], []
    if request.method == "POST" and form.is_valid():
        accepted, rejected = store_dicom(request, form.cleaned_data["files"], site=form.cleaned_data["site"] or None)
        if accepted:
            messages.success(request, ngettext("%(n)d DICOM image imported and queued for classification.",
                                               "%(n)d DICOM images imported and queued for classification.",
                                               len(accepted)) % {"n": len(accepted)})
        for name, message in rejected:
            form.add_error("files", f"{name}: {message}")
    return render(request, "clinic/dicom_import.html", {"form": form, "accepted": accepted},
                  status=400 if rejected and not accepted else 200)


@object_view(Case)
def case_dicom(request, case):
    return dicom_response(request, case)


def dicom_response(request, case):
    """The case's image with its result as a DICOM file (VL Photographic Image; the export is audited)."""
    try:
        data = dicom.export(case)
    except (OSError, Image.DecompressionBombError):
        raise Http404("The stored image cannot be read") from None
    record(request, "export_dicom", case)
    response = HttpResponse(data, content_type="application/dicom")
    response["Content-Disposition"] = f'attachment; filename="skinweb-case-{case.pk}.dcm"'
    response["Cache-Control"] = "private, no-store"
    return response


def _upload_json(request, lesion, form):
    """The page's drag-and-drop uploader sends one file per request and shows the answer beside it."""
    if not form.is_valid():
        errors = form.errors.get("images", [gettext("Invalid upload.")])
        return JsonResponse({"ok": False, "errors": [str(e) for e in errors]},
                            status=400)
    results = []
    for upload in form.cleaned_data["images"]:
        try:
            case = store_upload(request, lesion, upload)
        except ValidationError as exc:
            results.append({"name": upload.name, "ok": False, "error": exc.messages[0]})
        else:
            results.append({"name": upload.name, "ok": True, "case": case.pk,
                            "url": reverse("clinic:case_detail", args=[case.pk]),
                            "status_url": reverse("clinic:case_status", args=[case.pk]) + "?part=badge"})
    ok = all(r["ok"] for r in results)
    return JsonResponse({"ok": ok, "files": results}, status=200 if ok else 400)


@object_view(Case)
def case_detail(request, case):
    record(request, "view", case)
    form = FeedbackForm(instance=case.feedback, case=case)
    history = case.feedback_history.select_related("created_by")
    # Moving an image offers this patient's other lesions; another patient is found by identifier.
    lesions = case.lesion.patient.lesions.exclude(pk=case.lesion_id).order_by("pk")
    return render(
        request,
        "clinic/case_detail.html",
        {
            "case": case,
            "form": form,
            "history": history,
            "predictions": case.predictions.select_related("model_version"),
            "lesions": lesions,
            "similar": _similar(case),
            "differential": similar.differential_of(case.shown_prediction),
            "differential_disagrees": similar.differential_disagreement(case.shown_prediction),
        },
    )


def _similar(case):
    """Similar confirmed lesions for the case's current result (None while there is none, or it is withheld)."""
    return similar.similar_to(case.shown_prediction) if case.shown_prediction is not None else None


@never_cache
@object_view(Case)
def case_status(request, case):
    """The result panel alone; the case page polls it while the case is queued or running.

    Once the result is in, the panel brings the feedback form with it, so nothing needs a reload.
    """
    if request.GET.get("part") == "viewer":  # the image with its heat map, polled until the map is in
        return render(request, "clinic/partials/case_viewer.html", {"case": case})
    if request.GET.get("part") == "badge":  # the uploader's line for this case, polled until the result
        return render(request, "clinic/partials/case_badge_live.html", {"case": case})
    return render(
        request, "clinic/partials/case_status.html",
        {"case": case, "form": FeedbackForm(instance=case.feedback, case=case), "similar": _similar(case),
         "differential": similar.differential_of(case.shown_prediction),
         "differential_disagrees": similar.differential_disagreement(case.shown_prediction)},
    )


@object_view(Case)
def case_compare(request, case, ref):
    """The case's image beside one of its similar confirmed lesions: ``d<n>`` the n-th image of the
    reference library of the case's model version, ``c<id>`` a confirmed case of the same clinic (404 for
    any other clinic's, as everywhere)."""
    prediction = case.shown_prediction
    if prediction is None:
        raise Http404("This case has no result to compare")
    kind, number = ref[:1], ref[1:]
    if not number.isdigit() or kind not in ("d", "c"):
        raise Http404("No such similar lesion")
    if kind == "c":
        get_for_user(request.user, Case, pk=int(number))  # another clinic's: 404 before anything else
    found = similar.similar_to(prediction, k=max(settings.REFERENCE_NEIGHBOURS, 8))
    neighbours = {n.ref: n for n in (found.dataset + found.clinic)} if found else {}
    other = neighbours.get(f"{kind}{number}")
    if other is None:
        raise Http404("That lesion is not among this case's similar lesions")
    record(request, "compare", case, reference=other.ref)
    return render(request, "clinic/case_compare.html", {"case": case, "other": other, "prediction": prediction})


@require_GET
def reference_image(request, version, position):
    """A development-dataset image of a model version's reference library, to signed-in clinic users
    (licences allowing: REFERENCE_NONCOMMERCIAL); never a path from the request."""
    if getattr(request.user, "clinic_id", None) is None:
        raise Http404("No reference image")
    model_version = ModelVersion.objects.filter(pk=version).first()
    if model_version is None:
        raise Http404("No such model version")
    try:
        path = similar.reference_image_path(model_version, position)
    except LookupError as exc:
        raise Http404(str(exc)) from None
    kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    response = FileResponse(open(path, "rb"), content_type=kind)
    response["Cache-Control"] = "private, max-age=3600"
    return response


@object_view(Case, methods=("GET", "POST"))
def case_feedback(request, case):
    form = FeedbackForm(request.POST if request.method == "POST" else None, instance=case.feedback, case=case)
    if request.method == "POST" and form.is_valid():
        fields = {name: form.cleaned_data.get(name) for name in FeedbackForm.Meta.fields}
        feedback = case.record_feedback(request.user, **fields)
        record(request, "feedback", case, revision=feedback.revision)
        messages.success(request, gettext("Feedback saved (revision %(revision)s).") % {"revision": feedback.revision})
        return redirect("clinic:case_detail", pk=case.pk)
    return render(request, "clinic/feedback_form.html", {"case": case, "form": form})


@object_view(Case, methods=("POST",))
def case_retry(request, case):
    if case.status != Case.Status.FAILED:
        messages.info(request, gettext("Only a failed case can be retried."))
        return redirect("clinic:case_detail", pk=case.pk)
    with transaction.atomic():
        case.requeue()
        record(request, "retry", case)
        tasks.enqueue(case.pk)
    messages.success(request, gettext("The case is queued for classification again."))
    return redirect("clinic:case_detail", pk=case.pk)


@object_view(Case, methods=("POST",))
def case_flag(request, case):
    """A clinician sends a case to the administrators' relabel queue (or takes it back)."""
    value = request.POST.get("flagged") == "1"
    if value != case.flagged:
        Case.objects.filter(pk=case.pk).update(flagged=value)
        record(request, "flag" if value else "unflag", case)
        messages.success(request, gettext("Sent to the relabel queue.") if value
                         else gettext("Removed from the relabel queue."))
    return redirect("clinic:case_detail", pk=case.pk)


@object_view(Case, methods=("POST",))
def case_release_score(request, case):
    """Show the score of an image that does not look like a dermoscopic lesion, because the clinician asks
    for it with a reason: recorded on the case and in the audit trail, and marked on every output."""
    form = RemovalForm(request.POST)
    if not case.result_withheld:
        messages.info(request, gettext("This image's result is not withheld."))
    elif not form.is_valid():
        messages.error(request, gettext("Say why you need the score (at most 500 characters); nothing was changed."))
    else:
        with transaction.atomic():
            old, new = case.release_score(request.user, form.cleaned_data["reason"])
            record(request, "release_score", case, old=old, new=new)
        messages.warning(request, gettext("The score is shown on your request, marked as such on the page, the report "
                                          "and the exports: the image does not look like a dermoscopic lesion."))
    return redirect("clinic:case_detail", pk=case.pk)


@object_view(Case, methods=("POST",))
def case_move(request, case):
    """File an image (with its predictions, heat maps and feedback) under another lesion of the same
    clinic, when it was uploaded to the wrong one: with a reason, after a confirmation page that names both
    lesions; audited with the old and new lesion and the reason. Another patient is found by identifier (the
    page never lists every lesion of the clinic)."""
    reason = (request.POST.get("reason") or "").strip()[:500]
    lesion_id = request.POST.get("lesion") or ""
    target = Lesion.objects.visible_to(request.user).select_related("patient").filter(pk=lesion_id).first() \
        if lesion_id.isdigit() else None
    identifier = (request.POST.get("patient") or "").strip()
    if not reason:
        messages.error(request, gettext("Say why the image is moved; nothing was changed."))
        return redirect("clinic:case_detail", pk=case.pk)
    if target is None and identifier:
        patient = Patient.objects.visible_to(request.user).filter(identifier=identifier).first()
        if patient is None:
            messages.error(request, gettext("Your clinic has no patient %(identifier)s; nothing was changed.") % {
                "identifier": identifier})
            return redirect("clinic:case_detail", pk=case.pk)
        return render(request, "clinic/case_move.html", {"case": case, "reason": reason, "patient": patient,
                                                         "choices": patient.lesions.exclude(pk=case.lesion_id)})
    if target is None:
        messages.error(request, gettext("Choose a lesion of your clinic to move the image to."))
    elif target.pk == case.lesion_id:
        messages.info(request, gettext("The image is already filed under that lesion."))
    elif request.POST.get("confirm") != "1":
        return render(request, "clinic/case_move.html", {"case": case, "reason": reason, "target": target})
    else:
        old = case.lesion
        with transaction.atomic():
            Case.objects.filter(pk=case.pk).update(lesion=target)
            record(request, "move", case, old={"lesion": old.pk, "patient": old.patient.identifier},
                   new={"lesion": target.pk, "patient": target.patient.identifier}, reason=reason)
        messages.success(request, gettext("Image moved to %(lesion)s of patient %(identifier)s.") % {
            "lesion": target, "identifier": target.patient.identifier})
    return redirect("clinic:case_detail", pk=case.pk)


@object_view(Case, methods=("POST",))
def case_taken(request, case):
    """Correct the day an image was taken (it decides the visit the image belongs to); audited."""
    form = TakenForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("taken_on", [gettext("Enter a date.")])))
        return redirect("clinic:case_detail", pk=case.pk)
    old = case.taken_at
    local = timezone.localtime(old)
    new = timezone.make_aware(datetime.datetime.combine(form.cleaned_data["taken_on"], local.time()))
    if new != old:
        Case.objects.filter(pk=case.pk).update(taken_at=new)
        record(request, "correct_taken_at", case, old=old.isoformat(), new=new.isoformat())
        messages.success(request, gettext("The image now belongs to the visit of %(date)s.") % {
            "date": formats.date_format(form.cleaned_data["taken_on"], "SHORT_DATE_FORMAT")})
    return redirect("clinic:case_detail", pk=case.pk)


@object_view(Case, methods=("POST",))
def case_remove(request, case):
    """Remove an image uploaded by mistake, with a reason: hidden everywhere (with its predictions,
    heat maps and feedback), kept, and restorable by the clinic's administrator; audited."""
    form = RemovalForm(request.POST)
    if not form.is_valid():
        messages.error(request, gettext("Say why the image is removed (at most 500 characters); nothing was changed."))
        return redirect("clinic:case_detail", pk=case.pk)
    with transaction.atomic():
        old, new = case.remove(request.user, form.cleaned_data["reason"])
        record(request, "remove", case, old=old, new=new)
    messages.success(request, gettext("Image %(name)s removed. Your clinic's administrator can restore it from the "
                                      "list of removed images.") % {"name": case.original_name or case.pk})
    return redirect("clinic:lesion_detail", pk=case.lesion_id)


@object_view(Case)
def case_image(request, case):
    """Serve a case's image to users of its clinic; there is no public media URL."""
    return image_response(request, case)


def image_response(request, case):
    """The stored image of ``case`` (``?size=thumb``: its thumbnail), private to the browser."""
    if request.GET.get("size") == "thumb" and case.thumbnail:
        try:  # made once, at upload
            response = FileResponse(default_storage.open(case.thumbnail.name, "rb"), content_type="image/jpeg")
        except OSError:
            raise Http404("The stored thumbnail is missing") from None
    elif request.GET.get("size") == "thumb":
        # Cases uploaded before thumbnails were stored: made from the stored copy, at reduced scale.
        try:
            with default_storage.open(case.image.name, "rb") as f:
                img = Image.open(f)
                img.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                img = img.convert("RGB")
                img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                out = io.BytesIO()
                img.save(out, format="JPEG", quality=85)
        except (OSError, Image.DecompressionBombError):
            raise Http404("The stored image cannot be read") from None
        response = HttpResponse(out.getvalue(), content_type="image/jpeg")
    else:
        content_type = "image/png" if case.image.name.endswith(".png") else "image/jpeg"
        try:
            response = FileResponse(default_storage.open(case.image.name, "rb"), content_type=content_type)
        except OSError:
            raise Http404("The stored image is missing") from None
    response["Cache-Control"] = "private, max-age=3600"
    return response


@object_view(Case)
def case_heatmap(request, case):
    """The Grad-CAM overlay of the case's current prediction (a transparent PNG), to its clinic only."""
    return heatmap_response(case)


def heatmap_response(case):
    """The heat map of the case's shown result (none while its result is withheld)."""
    prediction = case.shown_prediction
    if prediction is None or not prediction.heatmap:
        raise Http404("This case has no heat map")
    try:
        response = FileResponse(default_storage.open(prediction.heatmap.name, "rb"), content_type="image/png")
    except OSError:
        raise Http404("The stored heat map is missing") from None
    response["Cache-Control"] = "private, max-age=3600"
    return response


@object_view(Case)
def case_report(request, case):
    """The case's one-page PDF report (a download; the export is audited)."""
    try:
        pdf = reports.case_pdf(case, request.user)
    except (OSError, Image.DecompressionBombError):
        messages.error(request, gettext("The report could not be made: the stored image cannot be read."))
        return redirect("clinic:case_detail", pk=case.pk)
    record(request, "export_pdf", case)
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="skinweb-case-{case.pk}.pdf"'
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
def case_export(request):
    """The case history as CSV, with the same filters as the history page (audited with them)."""
    form = CaseFilterForm(request.GET)
    cases = form.filter(Case.objects.visible_to(request.user).with_related())
    filters = {k: v for k, v in request.GET.items() if v}
    record(request, "export_csv", request.user.clinic or request.user, filters=filters, rows=cases.count())
    response = StreamingHttpResponse(reports.csv_lines(cases), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="skinweb-cases-{timezone.localdate():%Y%m%d}.csv"'
    response["Cache-Control"] = "private, no-store"
    return response
