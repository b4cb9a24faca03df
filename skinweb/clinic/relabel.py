"""The relabel queue (administrators): cases that need a ground truth before they can teach the
model, labelled one at a time or in bulk, and the switch that puts a case in the training set.

The rules and the audit shape live in ``Case.relabel``; the Django admin uses the same."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from skinweb.accounts.decorators import admin_required
from skinweb.audit.models import record
from skinweb.clinic.access import admin_scope
from skinweb.clinic.forms import TruthForm
from skinweb.clinic.models import Case, Label
from skinweb.redirects import redirect_to_next

PAGE_SIZE = 50


def relabel_scope(user):
    return admin_scope(user, Case.objects.all())


@admin_required
@require_GET
def relabel_queue(request):
    show = request.GET.get("show", "todo")
    cases = relabel_scope(request.user).select_related("lesion__patient", "prediction__model_version", "feedback")
    if show == "todo":
        cases = cases.for_relabelling().filter(truth_label="")
    elif show == "labelled":
        cases = cases.exclude(truth_label="")
    elif show == "training":
        cases = cases.filter(use_for_training=True)
    else:
        show = "all"
        cases = cases.for_relabelling()
    page = Paginator(cases.order_by("-created_at", "-pk"), PAGE_SIZE).get_page(request.GET.get("page"))
    counts = {
        "todo": relabel_scope(request.user).for_relabelling().filter(truth_label="").count(),
        "training": relabel_scope(request.user).filter(use_for_training=True).count(),
    }
    return render(request, "clinic/relabel_queue.html",
                  {"page": page, "show": show, "form": TruthForm(), "counts": counts,
                   "sources": Case.TruthSource.choices, "labels": Label.choices})


@admin_required
@require_POST
def relabel(request):
    """One case (``case``) or several (``cases``): set the ground truth, its source and the switch."""
    ids = request.POST.getlist("cases") or request.POST.getlist("case")
    form = TruthForm(request.POST)
    if not ids or not form.is_valid():
        messages.error(request, "Choose at least one case, a label and its source.")
        return redirect_to_next(request, "clinic:relabel_queue")
    cases = list(relabel_scope(request.user).filter(pk__in=[i for i in ids if i.isdigit()]))
    if not cases:
        raise Http404("No such case")
    data = form.cleaned_data
    with transaction.atomic():
        for case in cases:
            old, new = case.relabel(request.user, data["label"], data["source"], data["use_for_training"])
            record(request, "relabel", case, old=old, new=new)
    messages.success(request, f"Ground truth {data['label']} ({data['source']}) set on {len(cases)} case(s).")
    return redirect_to_next(request, "clinic:relabel_queue")


@admin_required
@require_POST
def training_switch(request, pk):
    case = get_object_or_404(relabel_scope(request.user), pk=pk)
    value = request.POST.get("use_for_training") == "1"
    if value != case.use_for_training:
        try:
            old, new = case.set_training(request.user, value)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            record(request, "relabel", case, old=old, new=new)
    return redirect_to_next(request, "clinic:relabel_queue")
