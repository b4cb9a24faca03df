import django.db.models.deletion
from django.db import migrations, models


def backfill(apps, schema_editor):
    Case = apps.get_model("clinic", "Case")
    Patient = apps.get_model("clinic", "Patient")
    for patient_id, clinic_id in Patient.objects.values_list("pk", "clinic_id"):
        Case.objects.filter(lesion__patient_id=patient_id).update(clinic_id=clinic_id)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("clinic", "0005_case_enqueued_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="case",
            name="clinic",
            field=models.ForeignKey(
                editable=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+",
                to="accounts.clinic",
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="case",
            name="clinic",
            field=models.ForeignKey(
                editable=False, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="accounts.clinic"
            ),
        ),
        migrations.AddIndex(
            model_name="case",
            index=models.Index(fields=["clinic", "-created_at", "-id"], name="case_history"),
        ),
    ]
