"""The Django-free classifier package: model files, the predictor and the predict command."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from classifier import ModelFileError, ModelMetadata, Predictor, load_model_file, save_model_file
from classifier.modelfile import read_metadata
from classifier.training.builder import build_model
from tests.builders import image_bytes
from tests.conftest import FIXTURES, ROOT


def test_classifier_imports_without_django():
    code = "import sys, classifier, classifier.predict; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_model_file_round_trip(model_file):
    state, meta = load_model_file(model_file)
    assert meta.version == "test-vgg16-64px"
    assert meta.arch == "vgg16" and meta.input_size == 64 and meta.threshold == 0.5
    assert meta.created  # filled in on save
    assert all(v.dtype == torch.float16 for v in state.values())
    assert sum(v.numel() for v in state.values()) < 15_000_000  # global pooling head, no fc6/fc7


def test_version_is_derived_from_weights_when_missing(tmp_path):
    torch.manual_seed(1)
    meta = save_model_file(tmp_path / "m.safetensors", build_model(), ModelMetadata(version="", input_size=32))
    assert meta.version.startswith("vgg16-") and len(meta.version.split("-")[-1]) == 8
    assert read_metadata(tmp_path / "m.safetensors").version == meta.version


def test_predictor_returns_plain_data(model_file, tmp_path):
    jpeg = tmp_path / "a.jpg"
    jpeg.write_bytes(image_bytes("JPEG", size=(300, 200)))
    png = tmp_path / "b.png"
    png.write_bytes(image_bytes("PNG", size=(90, 90)))
    predictor = Predictor.from_file(model_file, device="cpu")
    results = predictor.predict([jpeg, png, Image.open(jpeg)])
    assert len(results) == 3
    for r in results:
        assert 0.0 <= r.probability <= 1.0
        assert r.decision == ("malignant" if r.probability >= 0.5 else "benign")
        assert r.threshold == 0.5 and r.model_version == "test-vgg16-64px" and r.ms > 0
    # Same image as path and as PIL image: same answer.
    assert results[0].probability == pytest.approx(results[2].probability, abs=1e-6)


def test_decision_uses_stored_threshold(model_file, tmp_path):
    p = Predictor.from_file(model_file, device="cpu")
    assert p.decide(0.49) == "benign" and p.decide(0.5) == "malignant"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        Predictor.from_file(tmp_path / "nope.safetensors")


def test_pickle_file_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError):
        Predictor.from_file(bad)
    assert not (tmp_path / "pwned").exists()

    torch_file = tmp_path / "evil.pt"
    torch.save({"x": Boom()}, torch_file)
    with pytest.raises(ModelFileError):
        Predictor.from_file(torch_file)
    assert not (tmp_path / "pwned").exists()


def test_tampered_weights_are_refused(tmp_path, model_file):
    meta = read_metadata(model_file)
    bad = tmp_path / "tampered.safetensors"
    save_file({"features.0.weight": torch.zeros(3, 3)}, str(bad), metadata={"skinweb": meta.to_json()})
    with pytest.raises(ModelFileError, match="do not fit"):
        Predictor.from_file(bad)


def test_file_without_metadata_is_refused(tmp_path):
    bad = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(ModelFileError, match="no skinweb metadata"):
        read_metadata(bad)


def test_predict_command_prints_one_json_line_per_image(model_file, tmp_path):
    images = []
    for i, fmt in enumerate(["JPEG", "PNG"]):
        path = tmp_path / f"img{i}.{fmt.lower()}"
        path.write_bytes(image_bytes(fmt))
        images.append(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "classifier.predict", "--model", str(model_file), "--device", "cpu", *images],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["image"] for line in lines] == images
    assert {"probability", "decision", "threshold", "model_version", "ms"} <= set(lines[0])


def test_eval_preset_matches_torchvision_without_importing_it():
    """The inference preset is plain torch; it must compute what torchvision's transforms compute."""
    from torchvision.transforms import v2 as T

    from classifier.presets import IMAGENET_MEAN, IMAGENET_STD, ClassificationPresetEval

    reference = T.Compose([T.ToImage(), T.Resize((64, 64), antialias=True), T.ToDtype(torch.float32, scale=True),
                           T.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))])
    preset = ClassificationPresetEval(64)
    for path in sorted((FIXTURES / "images").iterdir()):
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        assert torch.allclose(preset(rgb), reference(rgb), atol=1e-5)


def test_inference_does_not_import_torchvision(model_file):
    """Neither loading a model file (PyTorch runtime) and classifying, nor Grad-CAM, imports
    torchvision: a worker saves its ~160 MB."""
    image = sorted((FIXTURES / "images").iterdir())[0]
    code = ("import sys; from classifier import Predictor; from classifier.explain import Explainer; "
            f"p = Predictor.from_file({str(model_file)!r}, device='cpu', runtime='torch'); "
            f"x = p.preprocess([{str(image)!r}]); p.run(x); "
            f"Explainer.from_file({str(model_file)!r}).heatmaps(x, [True]); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
def test_inference_builder_matches_torchvision_layer_for_layer(arch):
    from classifier.model import model_for_weights
    from classifier.training.builder import build_model

    ours, theirs = model_for_weights(arch).state_dict(), build_model(arch).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    ref = build_model(arch).eval()
    mine = model_for_weights(arch).eval()
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(mine(x), ref(x))


def _rgb(x):
    from classifier.presets import IMAGENET_MEAN, IMAGENET_STD

    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def _normalised(rgb):
    from classifier.presets import IMAGENET_MEAN, IMAGENET_STD

    return (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_shades_of_gray_makes_the_illuminant_grey_whatever_the_cast():
    from classifier.model import ShadesOfGray
    from classifier.presets import IMAGENET_MEAN, IMAGENET_STD, dihedral

    sog = ShadesOfGray(6, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    lesion = torch.rand(2, 3, 16, 16) * 0.6 + 0.1
    cast = lesion * torch.tensor([1.3, 1.0, 0.7]).view(1, 3, 1, 1)  # a warmer dermatoscope, nothing clipped
    out, out_cast = _rgb(sog(_normalised(lesion))), _rgb(sog(_normalised(cast)))
    # By hand: each channel's 6-norm mean is the same after it, so the illuminant is grey ...
    illuminant = out.pow(6).mean(dim=(2, 3)).pow(1 / 6)
    assert torch.allclose(illuminant, illuminant[:, :1].expand(-1, 3), rtol=1e-4)
    # ... and the cast is gone: the two differ by one brightness factor per image, not per channel.
    ratio = out_cast / out
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), rtol=1e-4)
    # A grey image is left as it is; the estimate is the same in every orientation.
    grey = _normalised(torch.full((1, 3, 8, 8), 0.5))
    assert torch.allclose(sog(grey), grey, atol=1e-5)
    x = _normalised(lesion)
    assert all(torch.allclose(sog(dihedral(x, k)), dihedral(sog(x), k), atol=1e-5) for k in range(8))


def test_colour_constancy_is_a_property_of_the_model_file(model_file, tmp_path):
    import dataclasses

    from classifier.model import ShadesOfGray, load_classifier

    model, meta = load_classifier(model_file)
    assert meta.colour_constancy == 0 and not isinstance(model.constancy, ShadesOfGray)
    path = tmp_path / "sog.safetensors"
    save_model_file(path, model, dataclasses.replace(meta, version="sog", colour_constancy=6))
    sog, sog_meta = load_classifier(path)
    assert sog_meta.colour_constancy == 6 and isinstance(sog.constancy, ShadesOfGray) and sog.constancy.p == 6
    assert set(load_model_file(path)[0]) == set(load_model_file(model_file)[0])  # no weights of its own
    torch.manual_seed(0)
    x = _normalised(torch.rand(2, 3, 64, 64) * torch.tensor([1.0, 0.7, 0.5]).view(1, 3, 1, 1))
    with torch.no_grad():
        assert not torch.allclose(sog.eval()(x), model.eval()(x), atol=1e-3)
        assert torch.allclose(sog(x), model(sog.constancy(x)), atol=1e-5)
    for bad in (-1, 0.5, 40, "six"):
        broken = dataclasses.replace(sog_meta, colour_constancy=bad)
        with pytest.raises(ModelFileError, match="colour constancy"):
            ModelMetadata.from_json(broken.to_json())
