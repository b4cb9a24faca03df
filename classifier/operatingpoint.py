"""An operating point as its own small file beside a model's weights.

A model file carries its threshold, borderline band and early-decision cascade in its header; changing
them used to mean a new 30 MB file in every clone. An operating point file (``<name>.operating-point.json``,
fitted by classifier.training.operatingpoint) holds only those, names the weights it was fitted for by
their sha256, and the model file it makes by its sha256:

    derive(weights, op_file, dest)  ->  dest: the same tensors, the header's operating point replaced,
                                        version "<weights version>-op<date>"

The derived file is an ordinary model file (the registry imports it, workers load it, the locked test
split's ledger is keyed by its sha256), and it is made the same byte for byte on every machine: a weights
file of other bytes, or a derived file that does not hash to the recorded value, is refused.
"""

import hashlib
import json
import shutil
from pathlib import Path

from classifier.modelfile import ModelFileError, file_sha256, read_metadata, replace_metadata

FORMAT = "skinweb-operating-point/1"
SUFFIX = ".operating-point.json"
# The operating point shipped for the starter's weights; `make run` publishes the model it derives.
DEFAULT_OPERATING_POINT_PATH = Path(__file__).resolve().parent / "models" / f"starter{SUFFIX}"


class OperatingPointError(ModelFileError):
    """The operating point file is unreadable, of another format, or for other weights."""


def read(path) -> dict:
    try:
        op = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise OperatingPointError(f"operating point file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise OperatingPointError(f"{Path(path).name} is not readable JSON ({exc})") from exc
    if not isinstance(op, dict) or op.get("format") != FORMAT:
        raise OperatingPointError(f"{Path(path).name} is not an operating point file ({FORMAT})")
    missing = {"version", "weights", "threshold", "operating_point", "model_sha256"} - set(op)
    if missing:
        raise OperatingPointError(f"{Path(path).name} lacks {', '.join(sorted(missing))}")
    if not 0 < float(op["threshold"]) < 1:
        raise OperatingPointError(f"{Path(path).name}: threshold {op['threshold']!r} is not between 0 and 1")
    return op


# What an operating point is; its digest names it in the derived header (the file's own bytes cannot: the
# file records the derived file's sha256).
CONTENT_KEYS = ("version", "weights", "threshold", "operating_point", "cascade")


def content_sha256(op: dict) -> str:
    return hashlib.sha256(json.dumps({k: op.get(k) for k in CONTENT_KEYS}, sort_keys=True).encode()).hexdigest()


def header_changes(op: dict, weights_meta) -> dict:
    """What the derived file's header says instead of the weights file's."""
    return {
        "version": op["version"],
        "threshold": float(op["threshold"]),
        "operating_point": op["operating_point"],
        "cascade": op.get("cascade") or {},
        "training": {**weights_meta.training, "operating_point_file": {
            "weights_version": weights_meta.version, "weights_sha256": op["weights"]["sha256"],
            "sha256": content_sha256(op), "fitted_on": op.get("fitted_on", {})}},
    }


def derive(weights_path, op_path, dest) -> Path:
    """Write the model file that ``op_path`` makes of ``weights_path`` to ``dest`` (a differential head
    beside the weights comes along); return ``dest``. Raises OperatingPointError (or ModelFileError)."""
    from classifier.differential import head_path
    from classifier.lesiongate import gate_path

    op = read(op_path)
    if file_sha256(weights_path) != op["weights"]["sha256"]:
        raise OperatingPointError(f"{Path(op_path).name} was fitted for weights {op['weights']['sha256'][:12]}…, "
                                  f"not {Path(weights_path).name}")
    meta = read_metadata(weights_path)
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(weights_path, tmp)
    replace_metadata(tmp, **header_changes(op, meta))
    if file_sha256(tmp) != op["model_sha256"]:
        tmp.unlink()
        raise OperatingPointError(f"{Path(op_path).name}: the derived model file does not hash to the recorded "
                                  f"{op['model_sha256'][:12]}… (another safetensors release?); not used")
    tmp.replace(dest)
    for companion in (head_path, gate_path):  # fitted on the weights' features: they apply to the derived file
        if companion(weights_path).is_file():
            shutil.copyfile(companion(weights_path), companion(dest))
    return dest


def derived_sha256(weights_path, op: dict, workdir) -> str:
    """The sha256 of the file ``op`` (not yet carrying ``model_sha256``) makes of ``weights_path``."""
    tmp = Path(workdir) / "derived.safetensors"
    shutil.copyfile(weights_path, tmp)
    replace_metadata(tmp, **header_changes(op, read_metadata(weights_path)))
    digest = file_sha256(tmp)
    tmp.unlink()
    return digest
