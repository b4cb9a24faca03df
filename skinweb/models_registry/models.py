import json
import math
import re
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from classifier import artefacts, operatingpoint
from classifier.modelfile import file_sha256, read_metadata

# Borderline band for versions whose model file predates stored bands (logit units around the threshold).
DERIVED_BAND_LOGIT = 0.5
# classifier.training.validation's definition of a stored band, read back to be said in the reader's language.
BAND_DEFINITION = re.compile(r"probabilities between the thresholds reaching (?P<low>\d+)% and (?P<high>\d+)% "
                             r"sensitivity on validation(?:, and below it at most (?P<melanomas>\d+)% of melanomas "
                             r"\(a conformal bound\))?")


class ModelVersionQuerySet(models.QuerySet):
    def published(self):
        """The one version workers use now, or None."""
        return self.filter(status=ModelVersion.Status.PUBLISHED).first()


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        TRAINING = "training", _("training")
        FAILED = "failed", _("failed")
        CANDIDATE = "candidate", _("candidate")
        PUBLISHED = "published", _("published")
        RETIRED = "retired", _("retired")

    version = models.CharField(max_length=100, unique=True)
    filename = models.CharField(max_length=200, blank=True, help_text="File name under MODEL_ROOT")
    arch = models.CharField(max_length=50, blank=True)
    input_size = models.PositiveIntegerField(default=0)
    threshold = models.FloatField(default=0.5)
    metadata = models.JSONField(default=dict, help_text="Everything the model file's header says")
    sha256 = models.CharField(max_length=64, blank=True,
                              help_text="sha256 of the model file's bytes when it was registered (sha256sum FILE)")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    publish_reason = models.TextField(blank=True)

    # Retraining: where the version came from and how its run went.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    trained_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    training_data = models.JSONField(default=dict, blank=True, help_text="Datasets, counts, clinic cases, fingerprint")
    recipe = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True, help_text="Last epoch's figures while training")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    evaluation = models.JSONField(
        default=dict, blank=True, help_text="This version and its parent on the same validation data"
    )
    shadow = models.JSONField(default=dict, blank=True, help_text="Decisions it would change on recent cases")
    fast_path = models.JSONField(
        default=dict, blank=True,
        help_text="Where the build of the ONNX fp32 / int8 artefacts stands ({}, building_since, built or error); "
                  "the report itself is the .fast.json file beside the model",
    )

    reference = models.JSONField(
        default=dict, blank=True,
        help_text="Where the build of the reference library of similar lesions stands ({}, building_since with "
                  "progress, built or error); the index is the .reference.npz file beside the model",
    )

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        verbose_name = _("model version")
        verbose_name_plural = _("model versions")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=models.Q(status="published"), name="one_published_model"
            )
        ]

    def __str__(self):
        return self.version

    @property
    def path(self):
        return settings.MODEL_ROOT / self.filename

    @cached_property
    def fast_report(self) -> dict | None:
        """The fast-path report written beside the model file (classifier.training.fastpath), when it is
        this version's."""
        if not self.filename:
            return None
        report = artefacts.read_report(self.path)
        return report if report and report.get("model_version") == self.version else None

    @property
    def runtime(self) -> str:
        """The runtime CPU workers use for this version: what its recent predictions ran on, else the fastest
        artefact that passed the guard on the building CPU (each worker times the accepted ones on its own
        CPU: worker_speeds), else PyTorch fp32."""
        recent = self.recent_runtimes
        if recent:
            total = sum(recent.values())
            return ", ".join(gettext("%(name)s (%(n)s of the last %(total)s results)") % {
                "name": name, "n": n, "total": total} for name, n in recent.items())
        return (self.fast_report or {}).get("chosen") or "torch"

    @cached_property
    def recent_runtimes(self) -> dict[str, int]:
        """{runtime: predictions} over this version's last 100 predictions: what the workers really ran."""
        from collections import Counter

        from skinweb.clinic.models import Prediction  # the clinic app's models import this module

        rows = Prediction.objects.filter(model_version=self).order_by("-pk").values_list("runtime", flat=True)[:100]
        return dict(Counter(rows).most_common())

    @property
    def worker_speeds(self) -> list[dict]:
        """Each worker CPU's own timing of the accepted runtimes (classifier.artefacts.record_speed)."""
        if not self.filename:
            return []
        return [v for v in artefacts.read_speeds(self.path).values() if isinstance(v, dict)]

    @property
    def views(self) -> int:
        """Orientations averaged per image at most (8 with test-time averaging, else 1)."""
        return 8 if self.metadata.get("tta") == "dihedral8" else 1

    @property
    def cascade(self) -> dict:
        """The early-decision rule in the model file (classifier.cascade), {} without one."""
        return self.metadata.get("cascade") or {}

    @property
    def silent(self) -> bool:
        """A training run whose worker has sent no heartbeat for TRAINING_STALE_AFTER seconds: the
        registry's sweep marks it failed (a page only says so; GET requests change nothing)."""
        if self.status != self.Status.TRAINING or self.heartbeat_at is None:
            return False
        return (timezone.now() - self.heartbeat_at).total_seconds() > settings.TRAINING_STALE_AFTER

    @property
    def validation_metrics(self) -> dict:
        return self.metadata.get("metrics", {})

    @classmethod
    def import_file(cls, source, operating_point=None) -> "ModelVersion":
        """Copy a model file into MODEL_ROOT and register it as a candidate (or return the existing row).
        With ``operating_point`` (an operating point file, classifier.operatingpoint), register the model
        file it makes of ``source``'s weights: same weights, its own threshold, band and cascade, its own
        version. Raises ModelFileError (OperatingPointError) for a file that is not what it says."""
        if operating_point is not None:
            op = operatingpoint.read(operating_point)
            existing = cls.objects.filter(version=op["version"]).first()
            if existing:
                return existing
            settings.MODEL_ROOT.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=settings.MODEL_ROOT) as tmp:
                derived = operatingpoint.derive(source, operating_point, Path(tmp) / f"{op['version']}.safetensors")
                return cls.import_file(derived)
        meta = read_metadata(source)  # raises ModelFileError for anything that is not a model file
        existing = cls.objects.filter(version=meta.version).first()
        if existing:
            return existing
        filename = f"{meta.version}.safetensors"
        settings.MODEL_ROOT.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, settings.MODEL_ROOT / filename)
        # Fast-path artefacts already built beside the source file come along (they are checked
        # against the version when a worker reads them); otherwise publishing asks for the build.
        built = artefacts.artefact_paths(source)
        report = artefacts.read_report(source)
        state = {}
        if report and report.get("model_version") == meta.version:
            for kind, dest in artefacts.artefact_paths(settings.MODEL_ROOT / filename).items():
                if built[kind].is_file():
                    shutil.copyfile(built[kind], dest)
            state = {"built": report["created"]}
        # So does a differential head fitted for this version (classifier.differential checks its version).
        from classifier.differential import head_path
        from classifier.lesiongate import gate_path

        for companion in (head_path, gate_path):  # so do the differential head and the lesion gate
            if companion(source).is_file():
                shutil.copyfile(companion(source), companion(settings.MODEL_ROOT / filename))
        return cls.objects.create(
            fast_path=state,
            version=meta.version,
            filename=filename,
            sha256=file_sha256(settings.MODEL_ROOT / filename),
            arch=meta.arch,
            input_size=meta.input_size,
            threshold=meta.threshold,
            metadata=json.loads(meta.to_json()),
        )

    @property
    def operating_point_file(self) -> dict:
        """Where this version's operating point came from when it was fitted apart from its weights
        (classifier.operatingpoint): the weights' version and sha256, the operating point's digest and what
        it was fitted on; {} for a model file that carries its own."""
        return self.metadata.get("training", {}).get("operating_point_file") or {}

    @property
    def weights_version(self) -> str:
        """The version of the weights this version runs (its own, unless it is weights with an operating point
        fitted apart, classifier.operatingpoint): what the differential head and the lesion gate are tied to."""
        return self.operating_point_file.get("weights_version") or self.version

    @cached_property
    def lesion_gate(self) -> dict | None:
        """The lesion gate beside the model file (classifier.lesiongate): its threshold and figures, or None."""
        from classifier import lesiongate

        if not self.filename:
            return None
        try:
            gate = lesiongate.load(self.path, self.weights_version)
        except lesiongate.GateError:
            return None
        return None if gate is None else {"threshold": gate.cutoff, **gate.meta}

    @property
    def weights_sha256(self) -> str:
        """The sha256 of the weights' own file (the shipped starter's, for a version derived from it)."""
        return self.operating_point_file.get("weights_sha256") or self.sha256

    @property
    def operating_point(self) -> dict:
        """The threshold's validation sensitivity/specificity and the borderline band around it.

        Model files store them since the calibrated starter; for older versions the band is derived:
        half a unit either side of the threshold on the logit scale, marked ``derived``."""
        stored = self.metadata.get("operating_point") or {}
        if stored.get("band"):
            return stored
        v = self.validation_metrics.get("validation", {})
        t = min(max(self.threshold, 1e-6), 1 - 1e-6)
        logit = math.log(t / (1 - t))
        return {
            "threshold": self.threshold,
            "sensitivity": v.get("sensitivity"),
            "specificity": v.get("specificity"),
            "band": [
                1 / (1 + math.exp(-(logit - DERIVED_BAND_LOGIT))),
                1 / (1 + math.exp(-(logit + DERIVED_BAND_LOGIT))),
            ],
            "band_definition": f"within {DERIVED_BAND_LOGIT} of the threshold on the logit scale (this version's file "
            "predates stored bands)",
            "derived": True,
        }

    @cached_property
    def locked_test(self) -> dict | None:
        """This file's score on the development set's locked test split (images that chose nothing), from
        the ledger (``LOCKED_TEST_LEDGER``; classifier.training.evaluate --split locked-test), or None."""
        if not self.sha256:
            return None
        return artefacts.read_ledger(settings.LOCKED_TEST_LEDGER).get(self.sha256)

    @property
    def threshold_in_words(self) -> str:
        """What the threshold means, per 100 lesions: the lower end of the 95% interval of its sensitivity on
        the locked test split where the file was scored there, else what its validation data said."""
        locked = self.locked_test or {}
        held_out = locked.get("operating_point") or {}
        if held_out.get("sensitivity_ci") and held_out.get("specificity") is not None:
            low = held_out["sensitivity_ci"][0]
            if locked.get("clean"):
                which = gettext("that took no part in training or in choosing this threshold")
            elif locked.get("operating_point_clean"):
                which = gettext("that took no part in training or in choosing this threshold (they were among the "
                                "images its training epochs and calibration were chosen on)")
            else:
                which = gettext("that took no part in training (but among those its threshold was chosen on)")
            return gettext(
                "On %(n_malignant)s malignant and %(n_benign)s benign held-out images %(which)s, the model found at "
                "least %(low)s of 100 malignant lesions at this threshold (the lower end of the %(level)s%% interval; "
                "%(measured)s measured) and flagged %(flagged)s of 100 benign ones.") % {
                "n_malignant": held_out["n_malignant"], "n_benign": held_out["n_benign"], "which": which,
                "low": math.floor(100 * low), "level": round(100 * held_out["level"]),
                "measured": round(100 * held_out["sensitivity"]),
                "flagged": round(100 * (1 - held_out["specificity"]))}
        op = self.operating_point
        if op.get("sensitivity") is None or op.get("specificity") is None:
            return ""
        return gettext("On validation data, at this threshold the model found %(found)s of 100 malignant lesions "
                       "and flagged %(flagged)s of 100 benign ones.") % {
            "found": round(100 * op["sensitivity"]), "flagged": round(100 * (1 - op["specificity"]))}

    @property
    def band_in_words(self) -> str:
        """How the borderline band was set, in the reader's language (the stored definition is English)."""
        op = self.operating_point
        if op.get("derived"):
            return gettext("within %(logit)s of the threshold on the logit scale (this version's file predates "
                           "stored bands)") % {"logit": formats.number_format(DERIVED_BAND_LOGIT)}
        definition = op.get("band_definition", "")
        match = BAND_DEFINITION.fullmatch(definition)
        if not match:
            return definition
        words = gettext("probabilities between the thresholds reaching %(low)s%% and %(high)s%% sensitivity on "
                        "validation") % {"low": match["low"], "high": match["high"]}
        if match["melanomas"]:
            words += gettext(", and below it at most %(share)s%% of melanomas (a conformal bound)") % {
                "share": match["melanomas"]}
        return words

    @property
    def headline_metrics(self) -> dict:
        v = self.validation_metrics.get("validation", {})
        return {k: v.get(k) for k in ("auc", "sensitivity", "specificity", "specificity_at_95_sensitivity")}

    def publish(self, user=None, reason=""):
        """Make this the one published version; the previous one is retired, not deleted."""
        with transaction.atomic():
            type(self).objects.filter(status=self.Status.PUBLISHED).exclude(pk=self.pk).update(
                status=self.Status.RETIRED
            )
            self.status = self.Status.PUBLISHED
            self.published_at = timezone.now()
            self.published_by = user
            self.publish_reason = reason
            self.save()
