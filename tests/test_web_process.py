"""The web process never loads PyTorch or ONNX Runtime: only workers run models.

Checked in a fresh interpreter (this one has loaded PyTorch for other tests): the URLconf, the
WSGI application and every Celery task module are imported, and a clinician and both kinds of
administrator go through the pages, an upload, the PDF and the CSV included."""

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r'''
import os, sys, tempfile
work = tempfile.mkdtemp()
os.environ.update(DJANGO_SETTINGS_MODULE="skinweb.settings", SKINWEB_VAR_DIR=work, DATABASE_URL="",
                  SQLITE_PATH=os.path.join(work, "db.sqlite3"), MEDIA_ROOT=os.path.join(work, "media"),
                  MODEL_ROOT=os.path.join(work, "models"), REDIS_URL="redis://127.0.0.1:1/0", DEBUG="1",
                  LOG_LEVEL="CRITICAL", ALLOWED_HOSTS="testserver")
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
import skinweb.wsgi, skinweb.urls
from skinweb.celery import app
app.loader.import_default_modules()
from django.test import Client
from django.urls import reverse
from tests.builders import make_case, make_clinic, make_lesion, make_patient, make_user, upload
from skinweb.models_registry.models import ModelVersion
from classifier.modelfile import DEFAULT_MODEL_PATH
north = make_clinic("North")
alice, carol, root = make_user("alice", north), make_user("carol", north, staff=True), make_user("root", superuser=True)
lesion = make_lesion(make_patient(north, "N-1"))
case = make_case(lesion, alice)
version = ModelVersion.import_file(DEFAULT_MODEL_PATH)
version.publish(reason="test")
c = Client()
c.force_login(alice)
pages = [reverse("clinic:dashboard"), reverse("clinic:case_list"), reverse("clinic:patient_list"),
         reverse("clinic:patient_detail", args=[lesion.patient.pk]), reverse("clinic:lesion_detail", args=[lesion.pk]),
         reverse("clinic:case_detail", args=[case.pk]), reverse("clinic:case_status", args=[case.pk]),
         reverse("clinic:case_image", args=[case.pk]) + "?size=thumb", reverse("clinic:case_report", args=[case.pk]),
         reverse("clinic:case_export")]
for url in pages:
    assert (s := c.get(url).status_code) == 200, (url, s)
assert c.post(reverse("clinic:lesion_upload", args=[lesion.pk]), {"images": [upload()]}).status_code == 302
c.force_login(carol)
assert c.get(reverse("clinic:relabel_queue")).status_code == 200
assert c.get(reverse("admin:clinic_case_changelist")).status_code == 200
c.force_login(root)
for url in (reverse("manage:model_list"), reverse("manage:model_detail", args=[version.pk]),
            reverse("admin:models_registry_modelversion_change", args=[version.pk])):
    assert (s := c.get(url).status_code) == 200, (url, s)
loaded = sorted(m for m in ("torch", "torchvision", "onnxruntime", "captum") if m in sys.modules)
print("LOADED", loaded)
'''


def test_the_web_stack_never_imports_torch_or_onnxruntime():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOADED []" in r.stdout, r.stdout
