"""The referral pages: a referrer's list, form and answers; the clinic's triage worklist, each referral's review
and the dermatologist's answer. Access: ``Referral.objects.visible_to`` (the clinic it was sent to, the practice
that sent it), 404 for everyone else."""

import datetime

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.http import FileResponse, Http404, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_http_methods

from skinweb.accounts.models import User
from skinweb.audit.models import record
from skinweb.clinic import imagechecks, tasks
from skinweb.clinic.access import object_view
from skinweb.clinic.models import Case, Lesion, Patient
from skinweb.clinic.uploads import normalise_image
from skinweb.clinic.views import image_response
from skinweb.referrals import notify
from skinweb.referrals.forms import (
    AnswerForm,
    LinkPracticeForm,
    MoreImagesForm,
    ReferralForm,
    ReferrerAccountForm,
    TargetsForm,
)
from skinweb.referrals.models import Answer, Practice, Referral

PAGE_SIZE = 25


def _referrer(request):
    if not request.user.is_referrer:
        raise PermissionDenied("Referring practices only.")
    return request.user.practice


def _clinic_member(request):
    if request.user.clinic_id is None:
        raise PermissionDenied("Members of the receiving clinic only.")


NOT_A_LESION = gettext_lazy("does not look like a dermoscopic image of a skin lesion (the AI's lesion check): take "
                            "it with the dermatoscope, close up on the lesion, or send the overview photograph in its "
                            "own field")


def _normalised(uploads, form, field="images", dermoscopic=True):
    """Each upload checked as the clinic's uploads are, and (``dermoscopic``) whether it is a lesion at all: an
    almost uniform picture at once, anything else by an inference worker's lesion check (up to
    REFERRAL_CHECK_SECONDS; no answer in time: sent unchecked, the worker withholds its result later). The
    messages go to the form; None when any failed."""
    images, failed = [], False
    for upload in uploads:
        try:
            image = normalise_image(upload)
        except ValidationError as exc:
            form.add_error(field, f"{upload.name}: {exc.messages[0]}")
            failed = True
            continue
        if dermoscopic and imagechecks.UNIFORM in image.warnings:
            form.add_error(field, f"{upload.name}: {imagechecks.in_words(imagechecks.UNIFORM)}")
            failed = True
            continue
        images.append((upload.name, image))
    if failed or not images or not dermoscopic or not settings.REFERRAL_CHECK_SECONDS:
        return None if failed else images
    contents = []
    for _, image in images:
        image.content.seek(0)
        contents.append(image.content.read())
        image.content.seek(0)
    checked = tasks.lesion_check_now(contents, settings.REFERRAL_CHECK_SECONDS)
    for _, image in images:
        image.lesion_checked = checked is not None
    for (name, _), answer in zip(images, checked or []):
        if answer.get("lesion") is False:
            form.add_error(field, f"{name}: {NOT_A_LESION}.")
            failed = True
    return None if failed else images


def _store_images(request, lesion, images) -> list[Case]:
    """Cases for the checked images, queued for classification once the transaction commits; a failure removes
    the files already written (the transaction removes the rows)."""
    made = []
    try:
        for name, image in images:
            case = lesion.add_image(request.user, name, image)
            record(request, "upload", case, lesion=lesion.pk, sha256=case.sha256, referral=lesion.referral.pk)
            tasks.enqueue(case.pk)
            made.append(case)
    except BaseException:
        for case in made:
            case.image.delete(save=False)
            case.thumbnail.delete(save=False)
        raise
    return made


@require_GET
def mine(request):
    """A referrer's home: their practice's referrals, newest first, with each one's state."""
    if request.user.clinic_id is not None:
        return redirect("referrals:triage")
    practice = _referrer(request)
    referrals = Referral.objects.filter(practice=practice).select_related("clinic").prefetch_related("answers")
    page = Paginator(referrals, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "referrals/mine.html", {"practice": practice, "page": page,
                                                   "no_clinic": not practice.clinics.exists()})


@require_http_methods(["GET", "POST"])
def create(request):
    practice = _referrer(request)
    form = ReferralForm(request.POST or None, request.FILES or None, practice=practice)
    if request.method == "POST" and form.is_valid():
        referral = checked_submission(request, form, practice)
        if referral is not None:
            n = referral.lesion.cases.count()
            messages.success(request, ngettext("Referral %(pk)s sent to %(clinic)s with %(n)d image.",
                                               "Referral %(pk)s sent to %(clinic)s with %(n)d images.", n) % {
                "pk": referral.pk, "clinic": referral.clinic.name, "n": n})
            return redirect("referrals:detail", pk=referral.pk)
    return render(request, "referrals/form.html", {"form": form, "practice": practice})


def checked_submission(request, form, practice) -> Referral | None:
    """The referral of a valid ``ReferralForm`` once every file passes the upload checks; else None, each bad
    file's message on the form and nothing stored (the page and the API come here)."""
    images = _normalised(form.cleaned_data["images"], form)
    overview = None
    if form.cleaned_data.get("overview"):
        overview = _normalised([form.cleaned_data["overview"]], form, "overview", dermoscopic=False)
        if overview is None:
            return None
    if images is None:
        return None
    return submit(request, form, practice, images, overview[0][1] if overview else None)


def submit(request, form, practice, images, overview) -> Referral:
    """The referral and its records in the receiving clinic: the patient (found by the practice's code and
    identifier, else made), a new lesion, one case per image."""
    data = form.cleaned_data
    clinic = data["clinic"]
    with transaction.atomic():
        identifier = f"{practice.code}-{data['patient_identifier']}"[:64]
        patient = Patient.objects.filter(clinic=clinic, identifier__iexact=identifier).first()
        if patient is None:
            patient = Patient.objects.create(clinic=clinic, identifier=identifier, birth_year=data["birth_year"],
                                             sex=data["sex"], created_by=request.user)
        lesion = Lesion.objects.create(patient=patient, site=data["site"], created_by=request.user,
                                       label=f"referred by {practice.name}"[:100])
        referral = form.save(commit=False)
        referral.practice, referral.clinic, referral.lesion = practice, clinic, lesion
        referral.created_by = request.user
        if overview is not None:
            referral.overview.save(f"overview.{overview.extension}", overview.content, save=False)
        try:
            referral.save()
            _store_images(request, lesion, images)
        except BaseException:
            if referral.overview:
                referral.overview.delete(save=False)
            raise
        record(request, "refer", referral, practice=practice.pk, images=len(images),
               checklist_score=referral.checklist_score, urgency=referral.urgency,
               lesion_check="done" if all(getattr(i, "lesion_checked", False) for _, i in images) else "not done")
        notify.referral_arrived(referral)
    return referral


def _detail_page(request, referral, answer_form=None, more_form=None, status=200):
    """The referral's page: for the clinic's members with the answer form while it is open, for the practice with
    the form for better images when they were asked for (``answer_form``/``more_form``: a bound one with its
    errors)."""
    cases = list(referral.lesion.cases.select_related("prediction__model_version").order_by("created_at", "pk"))
    clinic_view = request.user.clinic_id is not None
    if clinic_view and referral.is_open:
        answer_form = answer_form or AnswerForm()
    if not clinic_view and referral.status == Referral.Status.MORE_IMAGES:
        more_form = more_form or MoreImagesForm()
    return render(request, "referrals/detail.html", {
        "referral": referral, "cases": cases, "clinic_view": clinic_view, "answers": referral.answers.all(),
        "answer_form": answer_form if clinic_view else None, "more_form": None if clinic_view else more_form,
    }, status=status)


@object_view(Referral)
def detail(request, referral):
    if request.user.clinic_id is not None:
        record(request, "view", referral)
    return _detail_page(request, referral)


@object_view(Referral, methods=("POST",))
def answer(request, referral):
    _clinic_member(request)
    form = AnswerForm(request.POST)
    if not referral.is_open:
        messages.info(request, gettext("This referral has been answered already."))
        return redirect("referrals:detail", pk=referral.pk)
    if not form.is_valid():
        return _detail_page(request, referral, answer_form=form, status=400)
    given = record_answer(request, referral, form.cleaned_data)
    if given is None:
        messages.info(request, gettext("This referral has been answered already."))
        return redirect("referrals:detail", pk=referral.pk)
    messages.success(request, gettext("Answered: %(action)s. The practice has been told.") % {
        "action": given.get_action_display().lower()})
    return redirect("referrals:triage")


def record_answer(request, referral, data) -> Answer | None:
    """The dermatologist's answer (checked ``AnswerForm`` data): the referral's new state, the audit event, the
    practice's e-mail. None when the referral was answered meanwhile (nothing changes)."""
    with transaction.atomic():
        locked = Referral.objects.select_for_update().get(pk=referral.pk)
        if not locked.is_open:
            return None
        given = Answer.objects.create(referral=locked, created_by=request.user, **data)
        old = locked.status
        locked.status = Answer.STATUS_AFTER[given.action]
        locked.answered_at = timezone.now()
        locked.save(update_fields=["status", "answered_at"])
        record(request, "answer_referral", locked, answer=given.action, old={"status": old},
               new={"status": locked.status})
        notify.referral_answered(locked, given)
    referral.status, referral.answered_at = locked.status, locked.answered_at
    return given


@object_view(Referral, methods=("POST",))
def more_images(request, referral):
    _referrer(request)
    form = MoreImagesForm(request.POST, request.FILES)
    if referral.status != Referral.Status.MORE_IMAGES:
        messages.info(request, gettext("The clinic has not asked for more images of this referral."))
        return redirect("referrals:detail", pk=referral.pk)
    added = add_images(request, referral, form)
    if not added:
        return _detail_page(request, referral, more_form=form, status=400)
    images = added
    messages.success(request, ngettext("%(n)d image added; the referral is back in the clinic's list.",
                                       "%(n)d images added; the referral is back in the clinic's list.",
                                       len(images)) % {"n": len(images)})
    return redirect("referrals:detail", pk=referral.pk)


def add_images(request, referral, form) -> list | None:
    """The better images the clinic asked for (a bound ``MoreImagesForm``), checked as a referral's are: stored as
    cases of the referral's lesion, the referral back in the clinic's list, audited, the clinic told. None (the
    messages on the form) when a file is refused; nothing is stored then."""
    images = _normalised(form.cleaned_data["images"], form) if form.is_valid() else None
    if images is None:
        return None
    with transaction.atomic():
        _store_images(request, referral.lesion, images)
        Referral.objects.filter(pk=referral.pk).update(status=Referral.Status.OPEN)
        referral.status = Referral.Status.OPEN
        referral.refresh_triage()
        record(request, "more_images", referral, images=len(images), note=form.cleaned_data["note"],
               old={"status": Referral.Status.MORE_IMAGES}, new={"status": Referral.Status.OPEN})
        notify.referral_arrived(referral)
    return images


@object_view(Referral)
def image(request, referral, case_pk):
    """An image of the referral, to the practice that sent it and the clinic it was sent to."""
    case = referral.lesion.cases.filter(pk=case_pk).first()
    if case is None:
        raise Http404("No such image in this referral")
    return image_response(request, case)


@object_view(Referral)
def overview(request, referral):
    if not referral.overview:
        raise Http404("No overview photograph")
    response = FileResponse(referral.overview.open("rb"),
                            content_type="image/png" if referral.overview.name.endswith(".png") else "image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
def triage(request):
    """The clinic's open referrals, riskiest first (Referral.objects.triage_order), with how long each has waited
    and a warning past the clinic's target."""
    _clinic_member(request)
    clinic = request.user.clinic
    referrals = Referral.objects.filter(clinic=clinic).open().select_related("practice").triage_order()
    page = Paginator(referrals, PAGE_SIZE).get_page(request.GET.get("page"))
    now = timezone.now()
    targets = {Referral.Urgency.URGENT: datetime.timedelta(days=clinic.referral_target_urgent_days),
               Referral.Urgency.ROUTINE: datetime.timedelta(days=clinic.referral_target_routine_days)}
    rows = [(r, r.waited(now), r.waited(now) > targets[r.urgency]) for r in page]
    return render(request, "referrals/triage.html", {"page": page, "rows": rows, "clinic": clinic,
                                                     "n_open": page.paginator.count})


def _clinic_admin(request):
    if not request.user.is_clinic_admin:
        raise PermissionDenied("Your clinic's administrators only.")
    return request.user.clinic


@require_http_methods(["GET", "POST"])
def practices(request):
    """A clinic administrator's referring practices: link one (by its code, or a new one), add a referrer's
    account to one of them."""
    clinic = _clinic_admin(request)
    link_form, account_form = LinkPracticeForm(), ReferrerAccountForm(clinic=clinic)
    targets_form = TargetsForm(instance=clinic)
    if request.method == "POST" and request.POST.get("form") == "targets":
        old = {f: getattr(clinic, f) for f in TargetsForm.Meta.fields}
        targets_form = TargetsForm(request.POST, instance=clinic)
        if targets_form.is_valid():
            with transaction.atomic():
                targets_form.save()
                record(request, "referral_targets", clinic, old=old,
                       new={f: getattr(clinic, f) for f in TargetsForm.Meta.fields})
            messages.success(request, gettext("Targets saved."))
            return redirect("referrals:practices")
    elif request.method == "POST" and request.POST.get("form") == "link":
        link_form = LinkPracticeForm(request.POST)
        if link_form.is_valid():
            data = link_form.cleaned_data
            with transaction.atomic():
                practice = Practice.objects.filter(code__iexact=data["code"]).first()
                created = practice is None
                if created:
                    practice = Practice.objects.create(code=data["code"], name=data["name"].strip(),
                                                       email=data["email"])
                practice.clinics.add(clinic)
                record(request, "link_practice", practice, clinic=clinic.pk, created=created)
            messages.success(request, gettext("%(practice)s (%(code)s) can now send referrals to %(clinic)s.") % {
                "practice": practice.name, "code": practice.code, "clinic": clinic.name})
            return redirect("referrals:practices")
    elif request.method == "POST" and request.POST.get("form") == "account":
        account_form = ReferrerAccountForm(request.POST, clinic=clinic)
        if account_form.is_valid():
            data = account_form.cleaned_data
            with transaction.atomic():
                user = User.objects.create_user(data["username"], email=data["email"], password=data["password"],
                                                practice=data["practice"])
                record(request, "create_referrer", user, practice=data["practice"].pk)
            messages.success(request, gettext("Account %(username)s made for %(practice)s.") % {
                "username": user.username, "practice": data["practice"].name})
            return redirect("referrals:practices")
    linked = clinic.practices.annotate(referrers=Count("users", distinct=True),
                                       sent=Count("referrals", filter=Q(referrals__clinic=clinic), distinct=True))
    return render(request, "referrals/practices.html", {"clinic": clinic, "linked": linked.order_by("name"),
                                                        "link_form": link_form, "account_form": account_form,
                                                        "targets_form": targets_form})


def practice_unlink(request, pk):
    """POST: the practice can no longer refer to the administrator's clinic (access checked before the method)."""
    clinic = _clinic_admin(request)
    practice = clinic.practices.filter(pk=pk).first()
    if practice is None:
        raise Http404("No such practice linked to your clinic")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    with transaction.atomic():
        practice.clinics.remove(clinic)
        record(request, "unlink_practice", practice, clinic=clinic.pk)
    messages.success(request, gettext("%(practice)s can no longer send referrals to %(clinic)s; its referrals "
                                      "already sent stay in your list.") % {"practice": practice.name,
                                                                             "clinic": clinic.name})
    return redirect("referrals:practices")
