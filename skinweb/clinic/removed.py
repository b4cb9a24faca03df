"""Images removed by mistake, for administrators: who removed which and why, and the way back.

A clinic's administrator sees and restores their clinic's removed images, the platform
administrator everyone's; anyone else gets 403, another clinic's image 404."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from skinweb.accounts.decorators import admin_required
from skinweb.audit.models import record
from skinweb.clinic.access import admin_scope
from skinweb.clinic.models import Case
from skinweb.clinic.views import image_response

PAGE_SIZE = 50


def removed_scope(user):
    return admin_scope(user, Case.all_objects.filter(removed_at__isnull=False))


def _get(user, pk):
    case = removed_scope(user).filter(pk=pk).first()
    if case is None:
        raise Http404("No removed image found")
    return case


@admin_required
@require_GET
def removed_list(request):
    cases = removed_scope(request.user).select_related("lesion__patient", "removed_by", "prediction").order_by(
        "-removed_at", "-pk")
    page = Paginator(cases, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "clinic/removed_list.html", {"page": page})


@admin_required
@require_GET
def removed_image(request, pk):
    return image_response(request, _get(request.user, pk))


@admin_required
@require_POST
def restore(request, pk):
    case = _get(request.user, pk)
    with transaction.atomic():
        old, new = case.restore()
        record(request, "restore", case, old=old, new=new)
    messages.success(request, f"Image {case.original_name or case.pk} restored to {case.lesion} of patient "
                              f"{case.lesion.patient.identifier}.")
    return redirect("clinic:removed_list")
