from django.contrib import admin
from django.utils.html import format_html, format_html_join

from skinweb.models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "status", "arch", "input_size", "threshold", "runtime", "created_at", "published_at"]
    list_filter = ["status", "arch"]
    search_fields = ["version"]
    readonly_fields = ["fast_path_summary", *[f.name for f in ModelVersion._meta.fields]]

    def has_add_permission(self, request):
        return False  # versions come from model files: manage.py publish_model

    @admin.display(description="Runtime used by CPU workers")
    def runtime(self, obj):
        return obj.runtime

    @admin.display(description="Fast path (accuracy guard against PyTorch fp32)")
    def fast_path_summary(self, obj):
        report = obj.fast_report
        if report is None:
            return obj.fast_path.get("error") or "not built yet: workers use PyTorch fp32"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{:.1f}</td><td>{} / {} ({:.2%})</td><td>{:+.4f}</td><td>{:.4f}</td><td>{}</td></tr>",
            (
                (name, r["img_s"], r["decision_flips"], r["n"], r["decision_flip_rate"], r["auc_delta"],
                 r["max_probability_difference"], "chosen" if name == report["chosen"] else
                 ("passed" if r["passed"] else "rejected"))
                for name, r in report["runtimes"].items()
            ),
        )
        return format_html(
            "<table><thead><tr><th>runtime</th><th>images/s</th><th>decision flips</th><th>AUC change</th>"
            "<th>max probability difference</th><th></th></tr></thead><tbody>{}</tbody></table>"
            "<p>{} validation images, {} calibration images, batch {}, {} threads; guard: flips ≤ {:.1%}, "
            "|AUC change| ≤ {}.</p>",
            rows, report["validation_images"], report["calibration_images"], report["batch_size"],
            report["threads"], report["guard"]["max_decision_flip_rate"], report["guard"]["max_auc_delta"],
        )
