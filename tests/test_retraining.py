"""Relabel → retrain → evaluate → publish → roll back (issue 5)."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from skinweb.audit.models import AuditEvent
from skinweb.clinic.models import Case
from skinweb.models_registry import fastpath as registry_fastpath
from skinweb.models_registry import tasks, training
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_clinic, make_lesion, make_model_file, make_patient
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(client, carol):
    """North's clinic administrator, logged in."""
    client.force_login(carol)
    return carol


@pytest.fixture
def platform_admin(client, root):
    """The platform administrator, logged in: the shared registry and retraining are theirs."""
    client.force_login(root)
    return root


def feedback(case, user, agrees=True, histopathology=""):
    case.record_feedback(user, agrees_with_ai=agrees, clinical_diagnosis="nevus", management="monitor",
                         histopathology_result=histopathology)


@pytest.fixture
def queue(admin_user):
    """Cases of the admin's clinic: one with histopathology, one disagreement, one flagged, one
    already labelled, one ordinary; and a flagged case of another clinic."""
    lesion = make_lesion(make_patient(admin_user.clinic, "N-1"))
    histo, disagree, flagged, labelled, plain = (make_case(lesion) for _ in range(5))
    feedback(histo, admin_user, histopathology="melanoma")
    feedback(disagree, admin_user, agrees=False)
    Case.objects.filter(pk=flagged.pk).update(flagged=True)
    feedback(labelled, admin_user, agrees=False)
    labelled.relabel(admin_user, "benign", "consensus")
    feedback(plain, admin_user)
    other = make_case(make_lesion(make_patient(make_clinic("South"), "S-1")), flagged=True)
    return {"histo": histo, "disagree": disagree, "flagged": flagged, "labelled": labelled, "plain": plain,
            "other": other}


def listed(client, show):
    page = client.get(reverse("clinic:relabel_queue") + f"?show={show}")
    assert page.status_code == 200
    return {c.pk for c in page.context["page"]}


def test_relabel_queue_lists_what_needs_a_label(client, queue):
    q = queue
    assert listed(client, "todo") == {q["histo"].pk, q["disagree"].pk, q["flagged"].pk}
    assert listed(client, "labelled") == {q["labelled"].pk}
    assert listed(client, "all") == {q["histo"].pk, q["disagree"].pk, q["flagged"].pk, q["labelled"].pk}


def test_one_click_label_is_audited_with_old_and_new(client, admin_user, queue):
    case = queue["histo"]
    r = client.post(reverse("clinic:relabel"), {"case": case.pk, "label": "malignant", "source": "histopathology",
                                                "use_for_training": "on"})
    assert r.status_code == 302
    case.refresh_from_db()
    assert (case.truth_label, case.truth_source, case.use_for_training) == ("malignant", "histopathology", True)
    assert case.truth_set_by == admin_user
    event = AuditEvent.objects.get(action="relabel", object_id=str(case.pk))
    assert event.user == admin_user
    assert event.detail["old"] == {"truth_label": "", "truth_source": "", "use_for_training": False}
    assert event.detail["new"] == {"truth_label": "malignant", "truth_source": "histopathology",
                                   "use_for_training": True}


def test_bulk_label_and_the_training_switch(client, queue):
    q = queue
    client.post(reverse("clinic:relabel"), {"cases": [q["disagree"].pk, q["flagged"].pk], "label": "benign",
                                            "source": "follow_up"})
    for c in (q["disagree"], q["flagged"]):
        c.refresh_from_db()
        assert c.truth_label == "benign" and c.truth_source == "follow_up" and not c.use_for_training
    assert listed(client, "todo") == {q["histo"].pk}
    client.post(reverse("clinic:training_switch", args=[q["flagged"].pk]), {"use_for_training": "1"})
    q["flagged"].refresh_from_db()
    assert q["flagged"].use_for_training
    # No ground truth, no training.
    client.post(reverse("clinic:training_switch", args=[q["histo"].pk]), {"use_for_training": "1"})
    q["histo"].refresh_from_db()
    assert not q["histo"].use_for_training
    assert AuditEvent.objects.filter(action="relabel").count() == 3


def test_another_clinics_case_cannot_be_relabelled(client, queue):
    other = queue["other"]
    r = client.post(reverse("clinic:relabel"), {"case": other.pk, "label": "malignant", "source": "consensus"})
    assert r.status_code == 404
    assert client.post(reverse("clinic:training_switch", args=[other.pk]), {"use_for_training": "1"}).status_code == 404
    other.refresh_from_db()
    assert other.truth_label == ""


def test_clinicians_flag_cases_for_the_queue(client, queue, alice):
    assert queue["plain"].lesion.patient.clinic == alice.clinic
    r = client.post(reverse("clinic:case_flag", args=[queue["plain"].pk]), {"flagged": "1"})
    assert r.status_code == 302
    queue["plain"].refresh_from_db()
    assert queue["plain"].flagged
    assert AuditEvent.objects.filter(action="flag", user=alice).exists()


@pytest.fixture
def parent(model_file, settings):
    settings.TRAINING_DATASETS = [FIXTURES]
    version = ModelVersion.import_file(model_file)
    version.publish(reason="test")
    return version


def labelled_clinic_cases(clinic, user, n=8):
    """n cases on n lesions, each labelled and marked for training."""
    patient = make_patient(clinic)
    images = sorted((FIXTURES / "images").iterdir())
    cases = []
    for i in range(n):
        case = make_case(make_lesion(patient), data=images[i % len(images)].read_bytes())
        case.relabel(user, "malignant" if i % 2 else "benign", "histopathology", use_for_training=True)
        cases.append(case)
    return cases


def test_a_run_trains_evaluates_and_records_its_data(platform_admin, parent, carol):
    labelled_clinic_cases(carol.clinic, carol)  # North's administrator labelled them
    run = training.start_run(platform_admin, epochs=1)
    assert run.status == "training" and run.parent == parent and run.recipe["epochs"] == 1
    run = training.run_training(run.pk)
    assert run.status == "candidate", run.error
    assert run.path.is_file() and run.threshold > 0 and run.metadata["version"] == run.version
    assert run.metadata["lesion_check"]["validation_images"] > 0  # fitted on the run's own data
    data = run.training_data
    assert data["base_datasets"][0]["n"] == 12
    assert (data["clinic_cases_for_training"], data["clinic_cases_held_out"]) == (6, 2)  # a quarter of the lesions
    assert not set(data["clinic_case_ids"]) & set(data["held_out_case_ids"])
    ev = run.evaluation
    assert ev["candidate"]["version"] == run.version and ev["parent"]["version"] == parent.version
    # Both versions measured on the very same validation images.
    assert ev["candidate"]["validation"]["n"] == ev["parent"]["validation"]["n"] > 0
    assert ev["candidate"]["clinic_held_out"]["n"] == ev["parent"]["clinic_held_out"]["n"] == 2
    assert run.progress["epoch"] == 1 and run.progress["epochs"] == 1
    # Trained as the starter was: half the views re-encoded as JPEG (the model file records it).
    assert (run.recipe["jpeg_quality"], run.recipe["jpeg_p"]) == ("50,95", 0.5)
    trained = run.metadata["training"]["recipe"]
    assert (trained["jpeg_quality"], trained["jpeg_p"]) == ("50,95", 0.5)


def test_only_one_run_at_a_time_and_only_from_a_published_version(platform_admin, parent, settings):
    training.start_run(platform_admin, epochs=1)
    with pytest.raises(ValueError, match="already in progress"):
        training.start_run(platform_admin, epochs=1)
    ModelVersion.objects.filter(status="training").delete()
    settings.TRAINING_DATASETS = []
    with pytest.raises(ValueError, match="TRAINING_DATASETS"):
        training.start_run(platform_admin)


def test_a_cancelled_run_stops_after_its_epoch(platform_admin, parent):
    run = training.start_run(platform_admin, epochs=3)
    ModelVersion.objects.filter(pk=run.pk).update(cancel_requested=True)
    run = training.run_training(run.pk)
    assert run.status == "failed" and "Cancelled" in run.error and run.progress["epoch"] == 1


def test_a_silent_run_is_shown_then_marked_failed_by_the_sweep_not_by_a_page(client, platform_admin, parent, settings):
    run = training.start_run(platform_admin, epochs=1)
    ModelVersion.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER + 5))
    client.force_login(platform_admin)
    for url in (reverse("manage:model_list"), reverse("manage:model_detail", args=[run.pk])):
        assert client.get(url).status_code == 200
    run.refresh_from_db()
    assert run.status == "training"  # GET requests change nothing
    assert "has probably stopped" in client.get(reverse("manage:model_detail", args=[run.pk])).content.decode()
    tasks.sweep()  # the registry's periodic task
    run.refresh_from_db()
    assert run.status == "failed" and "stopped" in run.error


def test_a_silent_run_does_not_block_a_new_one(platform_admin, parent, settings):
    run = training.start_run(platform_admin, epochs=1)
    ModelVersion.objects.filter(pk=run.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER + 5))
    assert training.start_run(platform_admin, epochs=1).status == "training"
    run.refresh_from_db()
    assert run.status == "failed"


def test_publishing_a_worse_candidate_needs_a_reason_and_rollback_is_one_action(
    client, platform_admin, parent, tmp_path
):
    make_model_file(tmp_path / "c.safetensors", version="cand", seed=4)
    cand = ModelVersion.import_file(tmp_path / "c.safetensors")
    ModelVersion.objects.filter(pk=cand.pk).update(parent=parent, evaluation={
        "candidate": {"version": "cand", "validation": {"auc": 0.70, "sensitivity": 0.9, "specificity": 0.5,
                                                         "specificity_at_95_sensitivity": 0.3}},
        "parent": {"version": parent.version, "validation": {"auc": 0.75, "sensitivity": 0.9, "specificity": 0.4,
                                                              "specificity_at_95_sensitivity": 0.3}}})
    page = client.get(reverse("manage:model_detail", args=[cand.pk])).content.decode()
    assert "Worse than the parent on: AUC on validation" in page
    client.post(reverse("manage:publish", args=[cand.pk]), {"reason": ""})
    cand.refresh_from_db()
    assert cand.status == "candidate"  # refused without a reason
    client.post(reverse("manage:publish", args=[cand.pk]), {"reason": "better specificity on our population"})
    cand.refresh_from_db()
    parent.refresh_from_db()
    assert cand.status == "published" and parent.status == "retired" and cand.published_by == platform_admin
    assert AuditEvent.objects.filter(action="publish", object_id=str(cand.pk)).exists()
    # Roll back: one POST on the retired version.
    client.post(reverse("manage:publish", args=[parent.pk]))
    parent.refresh_from_db()
    assert parent.status == "published" and parent.publish_reason == "rolled back from cand"
    assert ModelVersion.objects.published() == parent
    assert AuditEvent.objects.filter(action="rollback", object_id=str(parent.pk)).exists()


def test_model_pages_render(client, platform_admin, parent):
    assert parent.version in client.get(reverse("manage:model_list")).content.decode()
    assert parent.version in client.get(reverse("manage:model_detail", args=[parent.pk])).content.decode()


def test_the_model_page_shows_validation_figures_and_why_the_fast_path_is_missing(client, platform_admin, settings,
                                                                                  tmp_path):
    import shutil

    from classifier.modelfile import DEFAULT_MODEL_PATH

    shutil.copyfile(DEFAULT_MODEL_PATH, tmp_path / "starter.safetensors")  # without artefacts built beside it
    starter = ModelVersion.import_file(tmp_path / "starter.safetensors")
    page = client.get(reverse("manage:model_detail", args=[starter.pk])).content.decode()
    v = starter.validation_metrics["validation"]
    assert "Headline: melanoma vs nevus" in page and f"{v['headline']['auc']:.3f}" in page
    assert "By data source" in page and "isic2017" in page and "ham224" in page
    assert "Calibration error" in page and "Not asked for yet" in page
    lc = starter.metadata["lesion_check"]
    assert f"above <strong>{lc['cutoff']:.1f}</strong>" in page
    assert f"of the {lc['validation_images']} validation" in page
    settings.TRAINING_DATASETS = []
    settings.FAST_PATH_CHECKSET = tmp_path / "no-checkset"
    starter.metadata = {**starter.metadata, "training": {}}
    registry_fastpath.build(starter)  # nothing to calibrate int8 on: the reason is shown, not buried
    page = client.get(reverse("manage:model_detail", args=[starter.pk])).content.decode()
    assert "Not built: no images here to calibrate int8 on" in page


def test_the_model_page_says_how_many_check_images_the_int8_recheck_reran_in_fp32(client, platform_admin, tmp_path):
    import json
    import shutil

    from classifier.artefacts import REPORT_FORMAT, artefact_paths
    from classifier.modelfile import DEFAULT_MODEL_PATH

    shutil.copyfile(DEFAULT_MODEL_PATH, tmp_path / "starter.safetensors")
    starter = ModelVersion.import_file(tmp_path / "starter.safetensors")
    fp32 = {"img_s": 7.3, "n": 256, "decision_flips": 0, "auc_delta": 0.0, "passed": True}
    artefact_paths(starter.path)["report"].write_text(json.dumps({
        "format": REPORT_FORMAT, "model_version": starter.version, "created": "2026-11-27T22:00:00Z",
        "validation_images": 256, "views": 8, "images_from": "classifier/checkset", "chosen": "onnx-int8-recheck",
        "guard": {"max_decision_flip_rate": 0.005, "max_auc_delta": 0.005},
        "runtimes": {"onnx-fp32": fp32, "onnx-int8-recheck": {**fp32, "img_s": 14.9, "rechecked": 26}},
    }))
    page = client.get(reverse("manage:model_detail", args=[starter.pk])).content.decode()
    assert "the fastest accepted runtime was <strong>onnx-int8-recheck</strong>" in page
    assert page.count("rerun in fp32") == 1 and "26 of 256 borderline images rerun in fp32" in page


@pytest.mark.parametrize("value, expected", [("50,95", "50,95"), (" 90 ", "90"), ("", "")])
def test_the_jpeg_setting_takes_what_training_takes(monkeypatch, value, expected):
    from skinweb.settings import env_jpeg_quality

    monkeypatch.setenv("RETRAIN_JPEG_QUALITY", value)
    assert env_jpeg_quality("RETRAIN_JPEG_QUALITY", "50,95") == expected


@pytest.mark.parametrize("value", ["95,50", "0,90", "50,101", "fifty", "50,70,90", "50,"])
def test_a_malformed_jpeg_setting_stops_the_start_not_a_run(monkeypatch, value):
    from django.core.exceptions import ImproperlyConfigured

    from skinweb.settings import env_jpeg_quality

    monkeypatch.setenv("RETRAIN_JPEG_QUALITY", value)
    with pytest.raises(ImproperlyConfigured, match="RETRAIN_JPEG_QUALITY"):
        env_jpeg_quality("RETRAIN_JPEG_QUALITY", "50,95")


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", "nan"])
def test_a_share_outside_0_to_1_stops_the_start(monkeypatch, value):
    from django.core.exceptions import ImproperlyConfigured

    from skinweb.settings import env_share

    monkeypatch.setenv("RETRAIN_JPEG_P", value)
    with pytest.raises(ImproperlyConfigured, match="RETRAIN_JPEG_P"):
        env_share("RETRAIN_JPEG_P", "0.5")
    monkeypatch.setenv("RETRAIN_JPEG_P", "0.25")
    assert env_share("RETRAIN_JPEG_P", "0.5") == 0.25


def test_one_click_labels_keep_the_training_switch_as_it_is(client, queue):
    """issue 43: labelling a case in one click turned "use for training" on without saying so. The one-click
    form sends the case's current switch, and the bulk form's box starts unticked."""
    page = client.get(reverse("clinic:relabel_queue") + "?show=all").content.decode()
    assert 'id="bulk-train" checked' not in page
    q = queue
    q["labelled"].set_training(None, True)
    page = client.get(reverse("clinic:relabel_queue") + "?show=all").content.decode()
    for case, on in ((q["histo"], False), (q["labelled"], True)):
        start = page.index(f'name="case" value="{case.pk}"')
        form = page[start:page.index("</form>", start)]
        assert ('name="use_for_training" value="on"' in form) is on
        data = {"case": case.pk, "label": "malignant", "source": "consensus",
                **({"use_for_training": "on"} if on else {})}
        client.post(reverse("clinic:relabel"), data)
        case.refresh_from_db()
        assert case.truth_label == "malignant" and case.use_for_training is on


def test_a_run_that_stopped_part_way_resumes_from_its_checkpoint_with_manage_py_retrain(platform_admin, parent,
                                                                                         monkeypatch, capsys):
    """issue 44: the product's retraining uses the resumable trainer; a run that stopped (here: its machine
    failed while writing the candidate, after its epochs' checkpoints) continues with `retrain --resume`."""
    from django.core.management import CommandError, call_command

    run = training.start_run(platform_admin, epochs=1)
    real_finish = training.finish
    monkeypatch.setattr(training, "finish", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    run = training.run_training(run.pk)
    assert run.status == "failed" and "disk full" in run.error
    assert training.resumable_runs() == [run]
    monkeypatch.setattr(training, "finish", real_finish)
    with pytest.raises(CommandError, match="is called"):
        call_command("retrain", "--resume", "no-such-run", "--here")
    call_command("retrain", "--resume", "--here")
    run.refresh_from_db()
    assert run.status == "candidate" and run.error == ""
    assert "candidate" in capsys.readouterr().out
    # A cancelled run is not offered again.
    other = training.start_run(platform_admin, epochs=1)
    ModelVersion.objects.filter(pk=other.pk).update(status="failed", error=training.CANCELLED)
    assert training.resumable_runs() == []
