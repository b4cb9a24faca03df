"""Grad-CAM heat maps: the classifier-side computation, the worker's function and the case page."""

import io

import numpy as np
import pytest
import torch
from django.urls import reverse
from PIL import Image

from classifier.explain import Explainer, TwoClass, blend, heatmap_png, heatmap_rgba, target_layer, undo_dihedral
from classifier.presets import dihedral
from skinweb.clinic import classification, explanations
from skinweb.clinic.models import Case, Prediction
from tests.builders import image_bytes, make_case, make_clinic, make_lesion, make_patient


@pytest.fixture(scope="module")
def explainer(model_file):
    return Explainer.from_file(model_file)


def test_target_layer_is_the_last_convolution(explainer):
    layer = target_layer(explainer.model)
    convs = [m for m in explainer.model.features if isinstance(m, torch.nn.Conv2d)]
    assert layer is convs[-1]  # plain VGG16: no batch norm after it


def test_two_class_view_is_the_logit_and_its_negative(explainer):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logit = explainer.model(x)
        both = TwoClass(explainer.model)(x)
    assert torch.equal(both[:, 1], logit) and torch.equal(both[:, 0], -logit)


def test_heatmaps_are_normalised_maps_of_the_input_size(explainer):
    batch = torch.randn(2, 3, 64, 64)
    maps = explainer.heatmaps(batch, [True, False])
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    for m in maps:  # each map either peaks at 1 or is empty (no evidence for that decision)
        assert m.max() == pytest.approx(1.0) or m.max() == 0
    # The benign map is the evidence against malignancy: not the malignant one.
    malignant_first = explainer.heatmaps(batch[:1], [True])[0]
    benign_first = explainer.heatmaps(batch[:1], [False])[0]
    assert not np.allclose(malignant_first, benign_first)


def test_a_map_turned_back_lies_on_the_image_as_uploaded():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    for k in range(8):
        assert torch.equal(undo_dihedral(dihedral(x, k), k), x)


def test_a_map_over_all_eight_orientations_turns_with_the_image(explainer):
    """The decision of a model that averages the 8 orientations does not depend on how the image was
    turned; its map, averaged over the same 8, turns with the image (a single view's would not)."""
    from classifier.training.data import load_samples
    from tests.conftest import FIXTURES

    with Image.open(load_samples(FIXTURES)[0].path) as img:
        x = explainer.transform(img.convert("RGB")).unsqueeze(0)
    turned = dihedral(x, 5)
    averaged = explainer.heatmaps(torch.cat([x, turned]), [True, True], views=[8, 8])
    np.testing.assert_allclose(dihedral(torch.from_numpy(averaged[0]), 5).numpy(), averaged[1], atol=1e-4)
    assert averaged.max() == pytest.approx(1.0)  # a real map, not an empty one
    upright = explainer.heatmaps(torch.cat([x, turned]), [True, True])
    assert not np.allclose(dihedral(torch.from_numpy(upright[0]), 5).numpy(), upright[1], atol=1e-4)
    # One view asked for is the upright map, as before.
    np.testing.assert_allclose(explainer.heatmaps(x, [True], views=[1]), upright[:1], atol=1e-4)


def test_overlay_png_is_transparent_where_there_is_no_evidence():
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0
    img = Image.open(io.BytesIO(heatmap_png(heat, (80, 60))))
    assert img.mode == "RGBA" and img.size == (80, 60)
    alpha = np.asarray(img)[..., 3]
    assert alpha[0, 0] == 0 and alpha[25, 25] > 150  # corner: nothing; hot block: nearly opaque
    base = Image.new("RGB", (80, 60), (200, 200, 200))
    mixed = np.asarray(blend(base, heat)).astype(int)
    assert (mixed[0, 0] == 200).all() and (mixed[25, 25] != 200).any()
    assert heatmap_rgba(np.zeros((4, 4)), (4, 4)).getextrema()[3] == (0, 0)


@pytest.mark.django_db
def test_worker_stores_a_heat_map_per_prediction(published_model, tmp_path):
    clinic = make_clinic("North")
    lesion = make_lesion(make_patient(clinic))
    cases = [make_case(lesion, data=image_bytes(size=(96, 64), color=(150 + 20 * i, 80, 60))) for i in range(3)]
    classification.classify_case(cases[0].pk, batch_size=3)
    ids = list(Prediction.objects.filter(case__in=cases).values_list("pk", flat=True))
    assert len(ids) == 3
    assert explanations.explain_predictions(ids) == 3
    assert explanations.explain_predictions(ids) == 0  # idempotent: a second delivery stores nothing
    for p in Prediction.objects.filter(pk__in=ids):
        assert p.heatmap and p.explained_at and not p.explanation_error and not p.explanation_pending
        with p.heatmap.open("rb") as f:
            img = Image.open(f)
            img.load()
        assert img.mode == "RGBA" and img.size == (96, 64)  # laid over the image: its size, its aspect


@pytest.mark.django_db
def test_unreadable_image_gives_a_reason_not_a_crash(published_model):
    lesion = make_lesion(make_patient(make_clinic("North")))
    case = make_case(lesion)
    classification.classify_case(case.pk)
    case.refresh_from_db()
    case.image.storage.delete(case.image.name)
    explanations.explain_predictions([case.prediction.pk])
    p = Prediction.objects.get(pk=case.prediction.pk)
    assert not p.heatmap and "could not be read" in p.explanation_error and not p.explanation_pending


@pytest.mark.django_db
def test_case_page_shows_the_overlay_controls_and_serves_the_map_to_its_clinic_only(client, published_model, north,
                                                                                    alice, bob):
    case = make_case(make_lesion(make_patient(north)), alice)
    classification.classify_case(case.pk)
    client.force_login(alice)
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert "Computing the heat map" in page and "data-heatmap-toggle" not in page
    case.refresh_from_db()
    explanations.explain_predictions([case.prediction.pk])
    page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
    assert (
        "data-heatmap-toggle" in page and "data-heatmap-opacity" in page and "Decision support, not a diagnosis" in page
    )
    viewer = client.get(reverse("clinic:case_status", args=[case.pk]) + "?part=viewer").content.decode()
    assert "hx-trigger" not in viewer  # the map is in: polling stops
    png = client.get(reverse("clinic:case_heatmap", args=[case.pk]))
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert "private" in png["Cache-Control"]
    client.force_login(bob)
    assert client.get(reverse("clinic:case_heatmap", args=[case.pk])).status_code == 404


@pytest.mark.django_db
def test_sweep_asks_again_for_missing_heat_maps(published_model, settings):
    from skinweb.clinic import sweep

    settings.SWEEP_QUEUED_AFTER = 0
    case = make_case(make_lesion(make_patient(make_clinic("North"))))
    classification.classify_case(case.pk)
    case = Case.objects.get(pk=case.pk)
    assert sweep.missing_heatmaps() == [case.prediction.pk]
