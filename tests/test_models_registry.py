"""Model versions: publish from a file, exactly one published, earlier ones retired; demo set-up."""

import pytest
from django.core.management import CommandError, call_command

from skinweb.accounts.models import User
from skinweb.clinic.management.commands.demo import Command as DemoCommand
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_model_file

pytestmark = pytest.mark.django_db


def test_publish_model_command_is_idempotent(model_file, settings, capsys):
    call_command("publish_model", str(model_file))
    call_command("publish_model", str(model_file))
    (version,) = ModelVersion.objects.all()
    assert version.status == "published" and version.threshold == 0.5 and version.input_size == 64
    assert (settings.MODEL_ROOT / version.filename).read_bytes() == model_file.read_bytes()
    assert "already published" in capsys.readouterr().out


def test_publishing_a_new_version_retires_the_old_one(model_file, tmp_path):
    call_command("publish_model", str(model_file))
    make_model_file(tmp_path / "v2.safetensors", version="v2", seed=3)
    call_command("publish_model", str(tmp_path / "v2.safetensors"))
    assert dict(ModelVersion.objects.values_list("version", "status")) == {
        "test-vgg16-64px": "retired", "v2": "published"}
    assert ModelVersion.objects.published().version == "v2"


def test_publishing_a_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(CommandError, match="not a safetensors model file"):
        call_command("publish_model", str(bad))
    assert not ModelVersion.objects.exists()


def test_demo_seed_is_idempotent():
    cmd = DemoCommand()
    cmd.seed()
    cmd.seed()
    demo, clinic_admin, admin = (User.objects.get(username=u) for u in ("demo", "clinicadmin", "admin"))
    assert (demo.role, clinic_admin.role, admin.role) == ("clinician", "clinic_admin", "platform_admin")
    assert demo.clinic == clinic_admin.clinic and demo.clinic is not None and admin.clinic is None
    assert demo.check_password("demo-skinweb") and clinic_admin.check_password("clinicadmin-skinweb")
    referrer = User.objects.get(username="referrer")
    assert referrer.role == "referrer" and referrer.clinic is None
    assert list(referrer.practice.clinics.all()) == [demo.clinic]
