"""ModelVersion.sha256: the registered file's digest (the locked test split's ledger is keyed by it)."""

import hashlib

from django.conf import settings
from django.db import migrations, models


def fill(apps, schema_editor):
    ModelVersion = apps.get_model("models_registry", "ModelVersion")
    for v in ModelVersion.objects.exclude(filename=""):
        path = settings.MODEL_ROOT / v.filename
        if path.is_file():
            v.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            v.save(update_fields=["sha256"])


class Migration(migrations.Migration):
    dependencies = [("models_registry", "0004_fast_path_state")]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="sha256",
            field=models.CharField(blank=True, help_text="sha256 of the model file's bytes when it was registered "
                                   "(sha256sum FILE)", max_length=64),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
