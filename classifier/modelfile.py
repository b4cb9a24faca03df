"""The model file: safetensors weights with the metadata needed to use them in the header.

One file carries everything a predictor needs (architecture, input size, normalisation,
threshold, version), so a model is data: loading it never unpickles code.
"""

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

FORMAT = "skinweb-classifier/1"
# The starter model shipped with skinweb; `make run` publishes it.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "models" / "starter.safetensors"
METADATA_KEY = "skinweb"
# Tensors of a model file that are data about the model, not weights (save_model_file(extra=...)).
EXTRA_PREFIX = "extra."
TTA_MODES = ("none", "dihedral8")


class ModelFileError(Exception):
    """The file is missing, not a model file, or does not match what its metadata promises."""


@dataclasses.dataclass
class ModelMetadata:
    version: str
    arch: str = "vgg16"
    input_size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    class_names: tuple = ("benign", "malignant")
    threshold: float = 0.5
    # Test-time averaging: "none", or "dihedral8" (the logit is the mean over the 8 rotations and
    # mirror images, so the decision cannot depend on how the image was turned).
    tta: str = "none"
    # Shades-of-grey colour constancy inside the network (classifier.model.ShadesOfGray): its
    # Minkowski p, or 0 for none.
    colour_constancy: float = 0.0
    # Platt calibration of the (averaged) logit: p = sigmoid(scale * logit + bias); {} for none.
    calibration: dict = dataclasses.field(default_factory=dict)
    # The threshold's validation sensitivity/specificity and the borderline band around it
    # (classifier.training.validation.operating_point); {} for files made before it existed.
    operating_point: dict = dataclasses.field(default_factory=dict)
    # The "does this look like a dermoscopic lesion" check (classifier.lesioncheck): its cut-off and how
    # it was set; its statistics are tensors of the file. {} for files made without it.
    lesion_check: dict = dataclasses.field(default_factory=dict)
    # Early decisions (classifier.cascade): the view counts run in stages, the margin from the threshold
    # and band edges beyond which an image stops, the order of the views, how they were fitted and what
    # they did on validation. {} for files without one: every image then runs all its views.
    cascade: dict = dataclasses.field(default_factory=dict)
    created: str = ""
    training: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    format: str = FORMAT

    @property
    def weights_version(self) -> str:
        """The version of the weights alone: a file derived from another with only a new operating point
        (classifier.operatingpoint) keeps its weights' version here, so that what was fitted on the weights'
        features (the differential head) still applies."""
        return (self.training.get("operating_point_file") or {}).get("weights_version") or self.version

    @property
    def views(self) -> int:
        """Forward passes per image: the 8 rotations/mirror images with dihedral averaging, else 1."""
        from classifier.presets import DIHEDRAL_VIEWS

        return DIHEDRAL_VIEWS if self.tta == "dihedral8" else 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ModelFileError(f"unsupported model format {data.get('format')!r}, expected {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        meta = cls(**{k: v for k, v in data.items() if k in known})
        if not 0.0 < float(meta.threshold) < 1.0:
            raise ModelFileError(f"threshold {meta.threshold!r} is not between 0 and 1")
        if meta.tta not in TTA_MODES:
            raise ModelFileError(f"unknown test-time averaging {meta.tta!r}; expected one of {', '.join(TTA_MODES)}")
        if meta.calibration and not all(isinstance(meta.calibration.get(k), (int, float)) for k in ("scale", "bias")):
            raise ModelFileError(f"calibration {meta.calibration!r} lacks a numeric scale and bias")
        if not isinstance(meta.colour_constancy, (int, float)) or not (
                meta.colour_constancy == 0 or 1 <= meta.colour_constancy <= 32):
            raise ModelFileError(f"colour constancy {meta.colour_constancy!r} is neither 0 (none) nor a p in 1..32")
        if meta.cascade:
            from classifier.cascade import validate_spec

            try:
                validate_spec(meta.cascade)
            except ValueError as exc:
                raise ModelFileError(str(exc)) from exc
        if int(meta.input_size) < 32:
            raise ModelFileError(f"input size {meta.input_size!r} is below 32 px")
        return meta


def file_sha256(path) -> str:
    """The sha256 of a model file's bytes: the model registry records it, the locked test split's
    ledger is keyed by it (``sha256sum FILE`` gives the same)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(state_dict: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_model_file(path, model, metadata: ModelMetadata, half: bool = True,
                    extra: dict | None = None) -> ModelMetadata:
    """Write a torch module's weights (fp16 by default, halving the file) and metadata to ``path``.

    Fills in ``created`` and, when empty, a ``version`` derived from the date and the weights.
    ``extra``: further tensors stored as they are under ``EXTRA_PREFIX`` (e.g. the lesion check's
    statistics, ``lesion_check.mean``); they are not weights and do not enter the version's digest.
    """
    from safetensors.torch import save_file

    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    now = datetime.datetime.now(datetime.UTC)
    metadata = dataclasses.replace(metadata, created=metadata.created or now.isoformat(timespec="seconds"))
    if not metadata.version:
        metadata.version = f"{metadata.arch}-{now:%Y%m%d}-{weights_digest(state)[:8]}"
    extra = {EXTRA_PREFIX + k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()}
    save_file({**state, **extra}, str(path), metadata={METADATA_KEY: metadata.to_json()})
    return metadata


def read_metadata(path) -> ModelMetadata:
    """Read only the header: cheap, for listing or checking a file without loading weights."""
    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only: no tensor is read
            header = f.metadata() or {}
    except FileNotFoundError as exc:
        raise ModelFileError(f"model file not found: {path}") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{Path(path).name} is not a safetensors model file ({exc})") from exc
    if METADATA_KEY not in header:
        raise ModelFileError(f"{Path(path).name} has no skinweb metadata")
    try:
        return ModelMetadata.from_json(header[METADATA_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{Path(path).name} has unreadable metadata ({exc})") from exc


def load_model_file(path) -> tuple[dict, ModelMetadata]:
    """Return (state_dict, metadata): the network's weights, without the ``extra`` tensors (see
    read_extra). Tensors are read by safetensors; nothing is unpickled."""
    metadata = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(EXTRA_PREFIX)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{Path(path).name}: cannot read weights ({exc})") from exc
    return state, metadata


def read_extra(path, name: str) -> dict:
    """The ``extra`` tensors saved under ``EXTRA_PREFIX + name + "."`` (names without that prefix)."""
    prefix = f"{EXTRA_PREFIX}{name}."
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{Path(path).name}: cannot read {name} ({exc})") from exc


def replace_metadata(path, **changes) -> ModelMetadata:
    """Rewrite a model file's metadata with ``changes`` (as dataclasses.replace takes them); its
    tensors are copied as they are, the version kept unless ``changes`` names one."""
    from safetensors.torch import save_file

    meta = dataclasses.replace(read_metadata(path), **changes)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tmp = Path(path).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: meta.to_json()})
    tmp.replace(path)
    return meta
