"""Similar confirmed lesions (issue 32): embeddings kept with each prediction, the reference library built
per model version, the clinic's own confirmed cases, and every way it can be unavailable."""

import shutil

import numpy as np
import pytest
from django.urls import reverse

from classifier import reference
from skinweb.clinic import classification
from skinweb.clinic.models import Case
from skinweb.models_registry import reference as registry_reference
from skinweb.models_registry.models import ModelVersion
from tests.builders import make_case, make_lesion, make_model_file, make_patient, make_user
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db

LABELS = [line.split(",") for line in (FIXTURES / "labels.csv").read_text().splitlines()[1:]]


@pytest.fixture(autouse=True)
def fresh_cache():
    classification._predictors.clear()
    yield
    classification._predictors.clear()


@pytest.fixture
def library(published_model, settings):
    """The published version's reference library, built from the 12 fixture images (half of them the
    model's validation side, so that its differential head has validation images outside the locked split)."""
    from classifier.modelfile import replace_metadata

    replace_metadata(published_model.path, training={"recipe": {"val_fraction": 0.5}})
    settings.REFERENCE_DATASET = str(FIXTURES)
    state = registry_reference.build(published_model)
    assert state["n"] == 12 and "built" in state
    return published_model


def classified(lesion, user, image_name):
    """A case of ``lesion`` whose image is the fixture image ``image_name``, classified."""
    case = make_case(lesion, user, data=(FIXTURES / image_name).read_bytes())
    classification.classify_case(case.pk)
    case.refresh_from_db()
    assert case.status == Case.Status.DONE
    return case


def confirm(case, user, label, diagnosis, source=Case.TruthSource.HISTOPATHOLOGY):
    case.record_feedback(user, agrees_with_ai=True, clinical_diagnosis=diagnosis, management="excise",
                         histopathology_result=diagnosis if source == Case.TruthSource.HISTOPATHOLOGY else "",
                         histopathology_date=None, notes="")
    case.relabel(user, label, source)


def test_each_prediction_keeps_the_embedding_of_the_views_it_averaged(alice, published_model):
    case = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0010251.jpg")
    stored = reference.decode(case.prediction.embedding)
    predictor = classification.get_predictor(published_model)
    with open(case.image.path, "rb") as f:
        expected = predictor.assess(predictor.preprocess([f])).embeddings[0].numpy()
    assert stored.shape == (512,)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-3)  # float16


def test_the_case_page_shows_the_nearest_reference_images_with_diagnosis_source_and_licence(alice, client, library):
    case = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0024931.jpg")
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    page = page[page.index('data-testid="similar-dataset"'):]
    # The same picture is in the library: it comes first, 100% similar, with its diagnosis and licence.
    first = page.index("Basal cell carcinoma")
    assert "100% similar" in page[first:first + 400] and "ISIC Archive (Kaggle subset)" in page[first:first + 600]
    index = reference.load(reference.index_path(library.path), library.version)
    position = list(index.keys).index("images/ISIC_0024931.jpg")
    image = client.get(reverse("clinic:reference_image", args=[library.pk, position]))
    assert image.status_code == 200 and b"".join(image.streaming_content) == (
        FIXTURES / "images/ISIC_0024931.jpg").read_bytes()
    assert image["Cache-Control"] == "private, max-age=3600"
    compare = client.get(reverse("clinic:case_compare", args=[case.pk, f"d{position}"]))
    assert compare.status_code == 200 and b"100% similar" in compare.content
    assert client.get(reverse("clinic:reference_image", args=[library.pk, 99])).status_code == 404
    assert client.get(reverse("clinic:case_compare", args=[case.pk, "d99"])).status_code == 404
    assert client.get(reverse("clinic:case_compare", args=[case.pk, "x1"])).status_code == 404


def test_a_deployment_can_switch_off_the_non_commercial_parts(alice, client, library, settings):
    settings.REFERENCE_NONCOMMERCIAL = False
    case = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0024931.jpg")
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert "ISIC Archive (Kaggle subset)" not in page and "ISIC 2017 Challenge, CC-0" in page
    assert "non-commercial use only are not shown" in page
    index = reference.load(reference.index_path(library.path), library.version)
    kaggle = list(index.sources).index("kaggle180")
    assert client.get(reverse("clinic:reference_image", args=[library.pk, kaggle])).status_code == 404


def test_the_clinic_s_confirmed_cases_join_its_library_and_no_other_clinic_s(alice, bob, client, library):
    north, south = make_lesion(make_patient(alice.clinic)), make_lesion(make_patient(bob.clinic))
    confirmed = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0013037.jpg")
    unconfirmed = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0013037.jpg")
    theirs = classified(south, bob, "images/ISIC_0013037.jpg")
    confirm(theirs, bob, "benign", "nevus")
    query = classified(north, alice, "images/ISIC_0013037.jpg")
    url = reverse("clinic:case_detail", args=[query.pk])

    page = client.get(url).content.decode()
    assert "No case of your clinic with a confirmed truth" in page  # bob's confirmed case is not offered
    confirm(confirmed, alice, "benign", "nevus")
    page = client.get(url).content.decode()
    clinic_part = page[page.index('data-testid="similar-clinic"'):]
    assert f"case {confirmed.pk} (histopathology)" in clinic_part and "100% similar" in clinic_part
    assert f"case {unconfirmed.pk}" not in clinic_part and f"case {theirs.pk}" not in clinic_part
    assert client.get(reverse("clinic:case_compare", args=[query.pk, f"c{confirmed.pk}"])).status_code == 200
    # Another clinic's case, or one not among the neighbours, is 404 however it is asked for.
    assert client.get(reverse("clinic:case_compare", args=[query.pk, f"c{theirs.pk}"])).status_code == 404
    assert client.get(reverse("clinic:case_compare", args=[query.pk, f"c{unconfirmed.pk}"])).status_code == 404
    client.force_login(bob)
    assert client.get(reverse("clinic:case_compare", args=[query.pk, f"c{confirmed.pk}"])).status_code == 404

    client.force_login(alice)
    confirmed.relabel(alice, "", "")  # truth withdrawn: it leaves the library
    assert f"case {confirmed.pk} (" not in client.get(url).content.decode()
    confirm(confirmed, alice, "benign", "nevus")
    confirmed.remove(alice, "wrong patient")  # removed: it leaves the library
    assert f"case {confirmed.pk} (" not in client.get(url).content.decode()
    # Images of the same lesion are not offered as similar to each other.
    same = classified(north, alice, "images/ISIC_0013037.jpg")
    confirm(same, alice, "benign", "nevus")
    assert f"case {same.pk} (" not in client.get(url).content.decode()


def test_every_way_the_library_can_be_unavailable_is_a_message_not_an_error(alice, client, published_model, settings,
                                                                            tmp_path):
    case = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0010444.jpg")
    url = reverse("clinic:case_detail", args=[case.pk])

    def shown():
        r = client.get(url)
        assert r.status_code == 200
        status = client.get(reverse("clinic:case_status", args=[case.pk]))
        assert status.status_code == 200
        return r.content.decode()

    assert "has not been built for this model version yet" in shown()
    assert registry_reference.claim(published_model) and not registry_reference.claim(published_model)
    assert "is being built" in shown()
    settings.REFERENCE_DATASET, settings.TRAINING_DATASETS = "", []
    registry_reference.build(published_model)
    assert "could not be built: no dataset with diagnoses is configured" in shown()

    # An index of another model version in this version's place.
    settings.REFERENCE_DATASET = str(FIXTURES)
    make_model_file(tmp_path / "other.safetensors", version="test-other")
    other = ModelVersion.import_file(tmp_path / "other.safetensors")
    assert "built" in registry_reference.build(other)
    registry_reference.build(published_model)
    shutil.copyfile(reference.index_path(other.path), reference.index_path(published_model.path))
    assert "was built with model test-other, not test-vgg16-64px" in shown()
    reference.index_path(published_model.path).write_bytes(b"not an index")
    assert "cannot be read" in shown()
    reference.index_path(published_model.path).unlink()
    assert "index file is missing" in shown()
    # A prediction with no embedding (written before they were kept).
    case.prediction.__class__.objects.filter(pk=case.prediction.pk).update(embedding=b"")
    assert "has no embedding" in shown()
    # A dataset image gone from the disk is a 404, not a 500.
    registry_reference.build(published_model)
    moved = tmp_path / "isic"
    shutil.copytree(FIXTURES, moved)
    settings.REFERENCE_DATASET = str(moved)
    registry_reference.build(published_model)
    shutil.rmtree(moved / "images")
    assert client.get(reverse("clinic:reference_image", args=[published_model.pk, 0])).status_code == 404


def test_a_user_of_no_clinic_gets_no_reference_image(client, library):
    client.force_login(make_user("nobody"))
    assert client.get(reverse("clinic:reference_image", args=[library.pk, 0])).status_code == 404


def test_the_library_is_asked_for_once_the_published_version_s_fast_path_is_settled(
        published_model, monkeypatch, django_capture_on_commit_callbacks):
    """The sweep asks for it (and the fast-path build's task, when it ends): embedded with the runtime the
    workers then use; once, however often the sweep runs."""
    from django.utils import timezone

    from skinweb.models_registry import tasks

    sent = []
    monkeypatch.setattr(tasks, "send_reference", sent.append)
    ModelVersion.objects.filter(pk=published_model.pk).update(fast_path={"building_since": timezone.now().isoformat()})
    with django_capture_on_commit_callbacks(execute=True):
        tasks.sweep()
    assert sent == []
    ModelVersion.objects.filter(pk=published_model.pk).update(fast_path={"built": timezone.now().isoformat()})
    with django_capture_on_commit_callbacks(execute=True):
        tasks.sweep()
        tasks.sweep()
    assert sent == [published_model.pk]
    assert "building_since" in ModelVersion.objects.get(pk=published_model.pk).reference
    # Recorded as built, but its index file is gone: asked for again.
    ModelVersion.objects.filter(pk=published_model.pk).update(reference={"built": "2026-12-05T00:00:00Z", "n": 1})
    with django_capture_on_commit_callbacks(execute=True):
        tasks.sweep()
    assert sent == [published_model.pk, published_model.pk]


def test_the_library_build_fits_the_differential_and_the_result_shows_it(alice, client, library):
    from classifier import differential

    case = classified(make_lesion(make_patient(alice.clinic)), alice, "images/ISIC_0013831.jpg")
    state = ModelVersion.objects.get(pk=library.pk).reference
    assert state["differential"]["n_train"] > 0, state
    stored = case.prediction.differential
    assert set(stored) == set(reference.CLASSES) and abs(sum(stored.values()) - 1) < 1e-3  # jsonb keeps no order
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert 'data-testid="differential"' in page and "Basal cell carcinoma" in page
    # The PDF report and the CSV export carry it too.
    import csv
    import io

    from pypdf import PdfReader

    pdf = client.get(reverse("clinic:case_report", args=[case.pk])).content
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    top = max(stored, key=stored.get)
    assert f"{reference.class_label(top)} {round(100 * stored[top])}%" in text
    export = b"".join(client.get(reverse("clinic:case_export")).streaming_content).decode()
    row = next(r for r in csv.DictReader(io.StringIO(export)) if r["case"] == str(case.pk))
    assert row["differential"].startswith(f"{top}={stored[top]:.4f}") and row["differential"].count("=") == 7
    # A prediction made before the head was fitted gets it from its embedding on the page.
    Case.objects.get(pk=case.pk).prediction.__class__.objects.filter(pk=case.prediction.pk).update(differential={})
    assert 'data-testid="differential"' in client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    # A head fitted on another model version is refused, never applied.
    head = differential.head_path(library.path)
    other = differential.load(library.path, library.version)
    differential.save(head, other.weight, other.bias, other.mean, other.scale, {"model_version": "someone-else"})
    with pytest.raises(differential.DifferentialError):
        differential.load(library.path, library.version)
    assert 'data-testid="differential"' not in client.get(
        reverse("clinic:case_detail", args=[case.pk])).content.decode()
    head.write_bytes(b"junk")
    assert client.get(reverse("clinic:case_detail", args=[case.pk])).status_code == 200
