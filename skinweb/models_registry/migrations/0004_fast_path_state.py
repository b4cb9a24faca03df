"""ModelVersion.fast_path keeps where the build stands; the report stays in the .fast.json file only."""

from django.db import migrations, models


def to_state(apps, schema_editor):
    ModelVersion = apps.get_model("models_registry", "ModelVersion")
    for v in ModelVersion.objects.exclude(fast_path={}):
        old = v.fast_path
        if old.get("runtimes"):
            v.fast_path = {"built": old.get("created", "")}
        elif old.get("error"):
            v.fast_path = {"error": old["error"]}
        else:
            continue
        v.save(update_fields=["fast_path"])


class Migration(migrations.Migration):
    dependencies = [("models_registry", "0003_retraining")]

    operations = [
        migrations.AlterField(
            model_name="modelversion",
            name="fast_path",
            field=models.JSONField(
                blank=True, default=dict,
                help_text="Where the build of the ONNX fp32 / int8 artefacts stands ({}, building_since, built or "
                          "error); the report itself is the .fast.json file beside the model",
            ),
        ),
        migrations.RunPython(to_state, migrations.RunPython.noop),
    ]
