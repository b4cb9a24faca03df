"""Similar confirmed lesions: a model version's embedding of an image, and exact nearest-neighbour search
over a reference library of lesions whose diagnosis is known.

An embedding is the model's pooled trunk features (the 512 numbers its head reads), averaged over the
same orientations as the decision (classifier.predictor.Assessment). Tschandl et al. (Br J Dermatol
2018) found retrieval on a classifier's own features as accurate as its output; cosine similarity on
them is what is searched here. Embeddings of one model version are comparable only with each other:
every index records the version it was built with, and a query of another version is refused.

Two libraries, never mixed: the development dataset's images with their diagnoses (an index file per
model version, ``<version>.reference.npz`` beside the model file, built by a background job:
``build``), and a clinic's own cases with a confirmed truth (their predictions' embeddings, searched
from the database: skinweb.clinic.similar). Search is exact (one matrix-vector product; measured in
docs/benchmarks.md, "Similar lesions"): at the sizes a clinic reaches it is within the latency asked
for, and an approximate index would add a dependency and a recall below 1 for nothing.

No PyTorch here: the web process searches with numpy alone.
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

FORMAT = "skinweb-reference/1"

# The differential's classes (issue 32), in display order, with the development set's diagnoses and the
# clinic's feedback vocabulary that fall in each. HAM10000's "akiec" (actinic keratosis and
# intraepithelial carcinoma) is labelled squamous cell carcinoma in the development set.
DIFFERENTIAL = {
    "melanoma": ("Melanoma", ("melanoma",)),
    "nevus": ("Nevus", ("nevus",)),
    "basal_cell_carcinoma": ("Basal cell carcinoma", ("basal_cell_carcinoma",)),
    "squamous_cell_carcinoma": ("Squamous cell carcinoma / actinic keratosis",
                                ("squamous_cell_carcinoma", "actinic_keratosis")),
    "benign_keratosis": ("Benign keratosis (seborrhoeic keratosis, solar lentigo, lichen-planus-like)",
                         ("seborrheic_keratosis", "pigmented_benign_keratosis", "solar_lentigo",
                          "lichen_planus_like_keratosis")),
    "dermatofibroma": ("Dermatofibroma", ("dermatofibroma",)),
    "vascular_lesion": ("Vascular lesion", ("vascular_lesion",)),
}
CLASSES = tuple(DIFFERENTIAL)
# The differential's classes that the benign/malignant head calls malignant.
MALIGNANT_CLASSES = frozenset({"melanoma", "basal_cell_carcinoma", "squamous_cell_carcinoma"})
_CLASS_OF = {d: c for c, (_, members) in DIFFERENTIAL.items() for d in members}


def differential_class(diagnosis: str) -> str | None:
    """The differential class of a diagnosis (the dataset's or the clinic's vocabulary), None if none."""
    return _CLASS_OF.get((diagnosis or "").strip().lower())


def class_label(name: str) -> str:
    return DIFFERENTIAL[name][0] if name in DIFFERENTIAL else name.replace("_", " ").capitalize()


# The development dataset's parts (labels.csv ``source``) and their licences (its README). A part not
# named here has an unknown licence and counts as non-commercial.
SOURCES = {
    "isic2017": ("ISIC 2017 Challenge", "CC-0", True),
    "ham224": ("HAM10000 (ISIC 2018)", "CC BY-NC 4.0", False),
    "ham600": ("HAM10000 (ISIC 2018)", "CC BY-NC 4.0", False),
    "isic2018test600": ("ISIC 2018 Challenge test set", "CC BY-NC 4.0", False),
    "isic2020": ("ISIC 2020", "CC BY-NC 4.0", False),
    "kaggle180": ("ISIC Archive (Kaggle subset)", "CC-0/BY/BY-NC per image", False),
}


def source_info(source: str) -> tuple[str, str, bool]:
    """(name, licence, commercial use allowed) of a dataset part."""
    return SOURCES.get(source, (source or "unknown source", "unknown licence", False))


def encode(vector) -> bytes:
    """An embedding as stored with a prediction: float16, little-endian."""
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise ValueError("an embedding is one finite vector")
    return np.clip(v, -65504, 65504).astype("<f2").tobytes()


def decode(blob: bytes | memoryview | None) -> np.ndarray | None:
    """The stored embedding as float32, or None when there is none."""
    blob = bytes(blob or b"")
    if not blob or len(blob) % 2:
        return None
    return np.frombuffer(blob, dtype="<f2").astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity is then a dot product); a zero row stays zero."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def nearest(query: np.ndarray, library: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """(indices, cosine similarities) of the ``k`` rows of ``library`` (unit rows) most similar to
    ``query``, best first, exact; ``allowed``: a boolean mask of the rows that may be returned."""
    if not len(library):
        return np.zeros(0, int), np.zeros(0, np.float32)
    sims = library @ normalise(query)[0]
    if allowed is not None:
        sims = np.where(allowed, sims, -np.inf)
    k = min(k, int(np.isfinite(sims).sum()))
    if k <= 0:
        return np.zeros(0, int), np.zeros(0, np.float32)
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return top, sims[top]


class LibraryUnavailable(ValueError):
    """A reference index that is missing, unreadable or of another model version."""


@dataclasses.dataclass
class Index:
    """The development dataset's reference library for one model version."""

    vectors: np.ndarray  # (n, d) float32, unit rows
    keys: np.ndarray  # image path relative to the dataset root
    diagnoses: np.ndarray  # the dataset's diagnosis
    sources: np.ndarray  # the dataset part (licence: SOURCES)
    meta: dict  # format, model_version, dataset, built, n, seconds
    raw: np.ndarray | None = None  # (n, d) the embeddings as stored (float16), for fitting the differential

    @property
    def model_version(self) -> str:
        return self.meta.get("model_version", "")

    def commercial_mask(self) -> np.ndarray:
        return np.array([source_info(s)[2] for s in self.sources], bool)

    def search(self, query, k: int, commercial_only: bool = False):
        return nearest(query, self.vectors, k, self.commercial_mask() if commercial_only else None)


def index_path(model_path) -> Path:
    """Where a model file's reference index lives (beside it, like its fast-path artefacts)."""
    return Path(model_path).with_suffix(".reference.npz")


def save(path, embeddings, keys, diagnoses, sources, meta: dict) -> None:
    """Write an index atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, vectors=np.asarray(embeddings, np.float16), keys=np.asarray(keys, str),
             diagnoses=np.asarray(diagnoses, str), sources=np.asarray(sources, str),
             meta=np.asarray(json.dumps({"format": FORMAT, **meta})))
    tmp.replace(path)


def load(path, model_version: str | None = None) -> Index:
    """Read an index (no pickles); LibraryUnavailable when it is missing, unreadable, or built with another
    model version than ``model_version``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            raw = z["vectors"]
            index = Index(normalise(raw.astype(np.float32)), z["keys"], z["diagnoses"], z["sources"], meta, raw)
    except FileNotFoundError:
        raise LibraryUnavailable("the reference library has not been built for this model version") from None
    except (OSError, ValueError, KeyError) as exc:
        raise LibraryUnavailable(f"the reference library's index cannot be read ({exc})") from None
    if meta.get("format") != FORMAT or not (len(index.vectors) == len(index.keys) == len(index.diagnoses)):
        raise LibraryUnavailable("the reference library's index is of another format; it is rebuilt")
    if model_version is not None and index.model_version != model_version:
        raise LibraryUnavailable(f"the reference library was built with model {index.model_version or '?'}, "
                          f"not {model_version}; it is rebuilt")
    return index


def build(predictor, samples, root, path, progress=None, batch_size: int = 16) -> dict:
    """Embed every sample with a diagnosis (classifier.training.data.Sample of the dataset folder
    ``root``) with ``predictor`` as a worker would, and write the index to ``path``. ``progress(done,
    total)`` is called after every batch. Returns the index's meta."""
    samples = [s for s in samples if differential_class(s.diagnosis)]
    if not samples:
        raise LibraryUnavailable("no image of the dataset has a diagnosis the library knows")
    root = Path(root).resolve()
    start, out = time.perf_counter(), []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        embeddings = predictor.assess(predictor.preprocess([s.path for s in chunk])).embeddings
        if embeddings is None:
            raise LibraryUnavailable(f"the runtime {predictor.runtime} gives no features to index")
        out.append(embeddings.numpy())
        if progress:
            progress(i + len(chunk), len(samples))
    meta = {"model_version": predictor.version, "dataset": str(root), "n": len(samples),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - start, 1), "runtime": predictor.runtime}
    save(path, np.concatenate(out), [str(Path(s.path).resolve().relative_to(root)) for s in samples],
         [s.diagnosis for s in samples], [s.source for s in samples], meta)
    return meta
