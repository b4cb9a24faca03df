"""Administrators' pages: the model registry, retraining, publishing, rollback."""


from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_POST

from skinweb.accounts.decorators import platform_admin_required
from skinweb.audit.models import record
from skinweb.models_registry import tasks, training
from skinweb.models_registry.models import ModelVersion

PAGE_SIZE = 50
HEADLINE = [("auc", "AUC"), ("sensitivity", _("Sensitivity")), ("specificity", _("Specificity")),
            ("specificity_at_95_sensitivity", _("Specificity at a sensitivity of 95%"))]


class PublishForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), widget=forms.Textarea(attrs={"rows": 2}), required=False,
                             max_length=1000)

    def __init__(self, *args, worse=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.worse = list(worse)
        if self.worse:
            self.fields["reason"].required = True
            self.fields["reason"].help_text = _("Required: some headline metrics are worse than the published "
                                                "version's.")


class RetrainForm(forms.Form):
    epochs = forms.IntegerField(min_value=1, max_value=200, required=False,
                                label=_("Epochs"), help_text=_("Leave empty for the configured default."))


@platform_admin_required
@require_GET
def model_list(request):
    versions = ModelVersion.objects.select_related("parent", "trained_by", "published_by").order_by("-created_at")
    return render(request, "models_registry/model_list.html",
                  {"versions": versions, "published": ModelVersion.objects.published(), "form": RetrainForm(),
                   "headline": HEADLINE})


@platform_admin_required
@require_POST
def retrain(request):
    form = RetrainForm(request.POST)
    if not form.is_valid():
        messages.error(request, gettext("The number of epochs must be between 1 and 200."))
        return redirect("manage:model_list")
    try:
        with transaction.atomic():
            version = training.start_run(request.user, epochs=form.cleaned_data["epochs"])
            record(request, "retrain", version, parent=version.parent.version, epochs=version.recipe["epochs"])
            transaction.on_commit(lambda: tasks.train_model.delay(version.pk), robust=True)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("manage:model_list")
    messages.success(request, gettext("Training run %(name)s queued.") % {"name": version.version})
    return redirect("manage:model_detail", pk=version.pk)


SET_LABELS = {"validation": _("Validation split (base data)"), "clinic_held_out": _("Clinic cases held out")}
SET_WORDS = {"validation": _("validation"), "clinic_held_out": _("clinic held out")}


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
                worse.append(gettext("%(metric)s on %(data)s") % {"metric": label, "data": SET_WORDS[set_name]})
    return rows, worse


@platform_admin_required
@require_GET
def model_detail(request, pk):
    version = get_object_or_404(ModelVersion.objects.select_related("parent", "trained_by", "published_by"), pk=pk)
    rows, worse = compare(version)
    if request.headers.get("HX-Request"):
        response = render(request, "models_registry/partials/run_progress.html", {"version": version})
        if version.status != ModelVersion.Status.TRAINING:
            response["HX-Refresh"] = "true"  # the run ended: reload for the comparison and actions
        return response
    return render(request, "models_registry/model_detail.html", {
        "version": version, "rows": rows, "worse": worse, "publish_form": PublishForm(worse=worse),
        "published": ModelVersion.objects.published(), "headline": HEADLINE,
    })


@platform_admin_required
@require_POST
def publish(request, pk):
    version = get_object_or_404(ModelVersion, pk=pk)
    if version.status not in (ModelVersion.Status.CANDIDATE, ModelVersion.Status.RETIRED) or not version.filename:
        messages.error(request, gettext("%(name)s is %(status)s: it cannot be published.") % {
            "name": version.version, "status": version.get_status_display()})
        return redirect("manage:model_detail", pk=pk)
    _, worse = compare(version) if version.status == ModelVersion.Status.CANDIDATE else (None, [])
    form = PublishForm(request.POST, worse=worse)
    if not form.is_valid():
        messages.error(request, gettext("Give a reason: %(metrics)s worse than the parent version.") % {
            "metrics": ", ".join(str(w) for w in worse)})
        return redirect("manage:model_detail", pk=pk)
    previous = ModelVersion.objects.published()
    rollback = version.status == ModelVersion.Status.RETIRED
    reason = form.cleaned_data["reason"] or (f"rolled back from {previous.version}" if rollback and previous else "")
    with transaction.atomic():
        version.publish(user=request.user, reason=reason)
        record(request, "rollback" if rollback else "publish", version, reason=reason,
               previous=previous.version if previous else None, worse=worse)
    tasks.request_fast_path(version)
    messages.success(request, gettext("%(name)s is published; workers use it from their next case.") % {
        "name": version.version})
    return redirect("manage:model_list")


@platform_admin_required
@require_POST
def cancel(request, pk):
    version = get_object_or_404(ModelVersion, pk=pk, status=ModelVersion.Status.TRAINING)
    ModelVersion.objects.filter(pk=pk).update(cancel_requested=True)
    record(request, "cancel_training", version)
    messages.info(request, gettext("Cancelling: the run stops after its current epoch."))
    return redirect("manage:model_detail", pk=pk)


@platform_admin_required
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
    messages.info(request, gettext("Shadow check over the last %(n)s cases queued.") % {"n": n})
    return redirect("manage:model_detail", pk=pk)
