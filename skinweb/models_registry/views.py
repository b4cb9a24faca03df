"""Administrators' pages: the relabel queue, the model registry, retraining, publishing, rollback."""

from functools import wraps

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from skinweb.audit.models import record
from skinweb.clinic.models import Case, Label
from skinweb.models_registry import tasks, training
from skinweb.models_registry.models import ModelVersion
from skinweb.redirects import redirect_to_next

PAGE_SIZE = 50
HEADLINE = [("auc", "AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("specificity_at_95_sensitivity", "Specificity at 95% sensitivity")]


def staff_required(view):
    """Administrators only: anyone else gets 403, whatever the method."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Administrators only.")
        return view(request, *args, **kwargs)

    return wrapper


def relabel_scope(user):
    """A clinic's admin relabels that clinic's cases; a platform admin (no clinic) all of them."""
    if user.clinic_id is None and user.is_superuser:
        return Case.objects.all()
    return Case.objects.visible_to(user)


class LabelForm(forms.Form):
    label = forms.ChoiceField(choices=Label.choices)
    source = forms.ChoiceField(choices=Case.TruthSource.choices)
    use_for_training = forms.BooleanField(required=False, initial=True, label="Use for training")


class PublishForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=1000)

    def __init__(self, *args, worse=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.worse = list(worse)
        if self.worse:
            self.fields["reason"].required = True
            self.fields["reason"].help_text = "Required: some headline metrics are worse than the published version's."


class RetrainForm(forms.Form):
    epochs = forms.IntegerField(min_value=1, max_value=200, required=False,
                                help_text="Leave empty for the configured default.")


def truth_snapshot(case):
    return {"truth_label": case.truth_label, "truth_source": case.truth_source,
            "use_for_training": case.use_for_training}


def set_label(request, case, label, source, use_for_training):
    old = truth_snapshot(case)
    case.set_truth(label, source, request.user, use_for_training=use_for_training)
    record(request, "relabel", case, old=old, new=truth_snapshot(case))


@staff_required
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
    return render(request, "models_registry/relabel_queue.html",
                  {"page": page, "show": show, "form": LabelForm(), "counts": counts,
                   "sources": Case.TruthSource.choices, "labels": Label.choices})


@staff_required
@require_POST
def relabel(request):
    """One case (``case``) or several (``cases``): set the ground truth, its source and the switch."""
    ids = request.POST.getlist("cases") or request.POST.getlist("case")
    form = LabelForm(request.POST)
    if not ids or not form.is_valid():
        messages.error(request, "Choose at least one case, a label and its source.")
        return redirect_to_next(request, "manage:relabel_queue")
    cases = list(relabel_scope(request.user).filter(pk__in=[i for i in ids if i.isdigit()]))
    if not cases:
        raise Http404("No such case")
    with transaction.atomic():
        for case in cases:
            set_label(request, case, form.cleaned_data["label"], form.cleaned_data["source"],
                      form.cleaned_data["use_for_training"])
    messages.success(request, f"Ground truth {form.cleaned_data['label']} ({form.cleaned_data['source']}) "
                              f"set on {len(cases)} case(s).")
    return redirect_to_next(request, "manage:relabel_queue")


@staff_required
@require_POST
def training_switch(request, pk):
    case = get_object_or_404(relabel_scope(request.user), pk=pk)
    value = request.POST.get("use_for_training") == "1"
    if value and not case.truth_label:
        messages.error(request, "Only a case with a ground truth can be used for training.")
    elif value != case.use_for_training:
        old = truth_snapshot(case)
        Case.objects.filter(pk=case.pk).update(use_for_training=value)
        case.use_for_training = value
        record(request, "relabel", case, old=old, new=truth_snapshot(case))
    return redirect_to_next(request, "manage:relabel_queue")


@staff_required
@require_GET
def model_list(request):
    versions = ModelVersion.objects.select_related("parent", "trained_by", "published_by").order_by("-created_at")
    return render(request, "models_registry/model_list.html",
                  {"versions": versions, "published": ModelVersion.objects.published(), "form": RetrainForm(),
                   "headline": HEADLINE})


@staff_required
@require_POST
def retrain(request):
    form = RetrainForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The number of epochs must be between 1 and 200.")
        return redirect("manage:model_list")
    try:
        with transaction.atomic():
            version = training.start_run(request.user, epochs=form.cleaned_data["epochs"])
            record(request, "retrain", version, parent=version.parent.version, epochs=version.recipe["epochs"])
            transaction.on_commit(lambda: tasks.train_model.delay(version.pk), robust=True)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("manage:model_list")
    messages.success(request, f"Training run {version.version} queued.")
    return redirect("manage:model_detail", pk=version.pk)


SET_LABELS = {"validation": "Validation split (base data)", "clinic_held_out": "Clinic cases held out"}


def compare(version):
    """Headline metrics of the candidate and its parent on the same data, with which are worse."""
    ev = version.evaluation or {}
    rows, worse = [], []
    for set_name in ("validation", "clinic_held_out"):
        cand, par = ev.get("candidate", {}).get(set_name), ev.get("parent", {}).get(set_name)
        if not cand or not par:
            continue
        for key, label in HEADLINE:
            a, b = cand.get(key), par.get(key)
            is_worse = a is not None and b is not None and a < b - 1e-9
            rows.append({"set": SET_LABELS[set_name], "metric": label, "candidate": a, "parent": b, "worse": is_worse,
                         "ci_candidate": cand.get("auc_ci95") if key == "auc" else None,
                         "ci_parent": par.get("auc_ci95") if key == "auc" else None})
            if is_worse:
                worse.append(f"{label} on {set_name.replace('_', ' ')}")
    return rows, worse


@staff_required
@require_GET
def model_detail(request, pk):
    version = get_object_or_404(ModelVersion.objects.select_related("parent", "trained_by", "published_by"), pk=pk)
    rows, worse = compare(version)
    if request.headers.get("HX-Request"):
        response = render(request, "models_registry/run_progress.html", {"version": version})
        if version.status != ModelVersion.Status.TRAINING:
            response["HX-Refresh"] = "true"  # the run ended: reload for the comparison and actions
        return response
    return render(request, "models_registry/model_detail.html", {
        "version": version, "rows": rows, "worse": worse, "publish_form": PublishForm(worse=worse),
        "published": ModelVersion.objects.published(), "headline": HEADLINE,
    })


@staff_required
@require_POST
def publish(request, pk):
    version = get_object_or_404(ModelVersion, pk=pk)
    if version.status not in (ModelVersion.Status.CANDIDATE, ModelVersion.Status.RETIRED) or not version.filename:
        messages.error(request, f"{version.version} is {version.status}: it cannot be published.")
        return redirect("manage:model_detail", pk=pk)
    _, worse = compare(version) if version.status == ModelVersion.Status.CANDIDATE else (None, [])
    form = PublishForm(request.POST, worse=worse)
    if not form.is_valid():
        messages.error(request, "Give a reason: " + ", ".join(worse) + " worse than the parent version.")
        return redirect("manage:model_detail", pk=pk)
    previous = ModelVersion.objects.published()
    rollback = version.status == ModelVersion.Status.RETIRED
    reason = form.cleaned_data["reason"] or (f"rolled back from {previous.version}" if rollback and previous else "")
    with transaction.atomic():
        version.publish(user=request.user, reason=reason)
        record(request, "rollback" if rollback else "publish", version, reason=reason,
               previous=previous.version if previous else None, worse=worse)
    tasks.request_fast_path(version)
    messages.success(request, f"{version.version} is published; workers use it from their next case.")
    return redirect("manage:model_list")


@staff_required
@require_POST
def cancel(request, pk):
    version = get_object_or_404(ModelVersion, pk=pk, status=ModelVersion.Status.TRAINING)
    ModelVersion.objects.filter(pk=pk).update(cancel_requested=True)
    record(request, "cancel_training", version)
    messages.info(request, "Cancelling: the run stops after its current epoch.")
    return redirect("manage:model_detail", pk=pk)


@staff_required
@require_POST
def shadow(request, pk):
    version = get_object_or_404(ModelVersion, pk=pk)
    if not version.filename:
        raise Http404("This version has no model file yet")
    try:
        n = max(1, min(1000, int(request.POST.get("n", 100))))
    except ValueError:
        n = 100
    ModelVersion.objects.filter(pk=pk).update(shadow={"pending": True, "n": n})
    record(request, "shadow_check", version, n=n)
    transaction.on_commit(lambda: tasks.shadow_check.delay(version.pk, n), robust=True)
    messages.info(request, f"Shadow check over the last {n} cases queued.")
    return redirect("manage:model_detail", pk=pk)
