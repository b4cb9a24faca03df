"""Similar confirmed lesions for a case's result (issue 32): the nearest images of the development dataset's
reference library and of the clinic's own confirmed cases, in the embedding of the model version that
made the prediction (classifier.reference). Searched when the page is rendered, so a case joins its
clinic's library as soon as its truth is set and leaves it when removed or its truth is withdrawn.

Every failure is a message on the page, never an error: no embedding, a library not built yet or built
with another model version, a dataset image gone.
"""

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
from django.conf import settings
from django.urls import reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from classifier import differential, reference
from skinweb.clinic.models import DECISION_WORDS, DIAGNOSES, Case, Prediction

log = logging.getLogger(__name__)

# Truth sources that make a clinic's case a confirmed reference (all are set by an administrator).
CONFIRMED = (Case.TruthSource.HISTOPATHOLOGY, Case.TruthSource.CONSENSUS, Case.TruthSource.FOLLOW_UP)


@dataclasses.dataclass
class Neighbour:
    ref: str  # "d<index position>" (dataset) or "c<case id>" (the clinic's)
    diagnosis: str  # words
    similarity: float  # cosine, -1..1
    origin: str  # where it came from: the dataset part and licence, or the clinic case's truth source
    thumbnail: str  # URL
    image: str  # URL of the whole image (the compare page)
    link: str = ""  # the clinic case's page

    @property
    def percent(self) -> int:
        return max(0, round(100 * self.similarity))


@dataclasses.dataclass
class Similar:
    dataset: list[Neighbour]
    clinic: list[Neighbour]
    dataset_message: str = ""  # why the dataset part is empty, when it is
    clinic_message: str = ""
    noncommercial_hidden: bool = False

    @property
    def parts(self) -> list[tuple]:
        """(neighbours, heading, message when none, test id) of each library, in page order."""
        return [(self.dataset, gettext("Reference library (public dermoscopy datasets)"), self.dataset_message,
                 "similar-dataset"),
                (self.clinic, gettext("Your clinic's confirmed cases"), self.clinic_message, "similar-clinic")]


_cache: dict[Path, tuple[float, reference.Index]] = {}
_lock = threading.Lock()


def load_index(version) -> reference.Index:
    """The reference index of a model version (ModelVersion), cached per process by file and mtime;
    LibraryUnavailable while it is missing, being built, unreadable or of another version."""
    state = version.reference or {}
    if "built" not in state:
        if "building_since" in state:
            done, total = state.get("done") or 0, state.get("total")
            raise reference.LibraryUnavailable(
                gettext("the reference library for this model version is being built")
                + (f" ({done} of {total} images)" if total else "") + "; similar lesions appear here when it is ready")
        if "error" in state:
            raise reference.LibraryUnavailable(gettext("the reference library could not be built: %(error)s")
                                           % {"error": state["error"]})
        raise reference.LibraryUnavailable(
            gettext("the reference library has not been built for this model version yet"))
    path = reference.index_path(version.path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise reference.LibraryUnavailable(gettext("the reference library's index file is missing; the registry's "
                                                   "sweep has it rebuilt in the background")) from None
    with _lock:
        cached = _cache.get(path)
        if cached is None or cached[0] != mtime:
            _cache[path] = (mtime, reference.load(path, version.version))
        return _cache[path][1]


# The development dataset's diagnoses (labels.csv) and the differential's classes (classifier.reference), in
# the reader's language: the clinic's own words for the diagnoses they share.
DATASET_DIAGNOSES = {**dict(DIAGNOSES), "pigmented_benign_keratosis": _("Pigmented benign keratosis")}
CLASS_WORDS = {
    **{name: DATASET_DIAGNOSES[name] for name in ("melanoma", "nevus", "basal_cell_carcinoma", "dermatofibroma",
                                                  "vascular_lesion")},
    "squamous_cell_carcinoma": _("Squamous cell carcinoma / actinic keratosis"),
    "benign_keratosis": _("Benign keratosis (seborrhoeic keratosis, solar lentigo, lichen-planus-like)"),
}


def dataset_diagnosis(diagnosis: str) -> str:
    """A dataset image's diagnosis in words, as the dataset names it (the differential groups some)."""
    return str(DATASET_DIAGNOSES.get(diagnosis, diagnosis.replace("_", " ").capitalize()))


def class_words(name: str) -> str:
    """A differential class in the reader's language."""
    return str(CLASS_WORDS.get(name, reference.class_label(name)))


def _dataset_neighbours(prediction, query, k) -> tuple[list[Neighbour], str, bool]:
    try:
        index = load_index(prediction.model_version)
    except reference.LibraryUnavailable as exc:
        text = str(exc)  # a sentence's first letter up, the rest as written (German nouns keep their capital)
        return [], text[:1].upper() + text[1:] + ".", False
    commercial_only = not settings.REFERENCE_NONCOMMERCIAL
    found, sims = index.search(query, k, commercial_only=commercial_only)
    out = []
    for i, sim in zip(found.tolist(), sims.tolist()):
        name, licence, _ = reference.source_info(str(index.sources[i]))
        diagnosis = str(index.diagnoses[i])
        out.append(Neighbour(
            f"d{i}", dataset_diagnosis(diagnosis),
            sim, f"{name}, {licence}", *[reverse("clinic:reference_image", args=[prediction.model_version_id, i])] * 2))
    message = "" if out else gettext("No image of the reference library may be shown in this deployment.")
    return out, message, commercial_only


def confirmed_diagnosis(case: Case) -> str:
    """What a confirmed case was: the histopathology result, else the clinician's diagnosis of record,
    else its ground truth (benign or malignant)."""
    feedback = case.feedback
    if feedback is not None and feedback.histopathology_result:
        return feedback.get_histopathology_result_display()
    if feedback is not None and case.truth_source != Case.TruthSource.HISTOPATHOLOGY:
        return feedback.get_clinical_diagnosis_display()
    return case.get_truth_label_display()


def _clinic_neighbours(prediction, query, k) -> tuple[list[Neighbour], str]:
    case = prediction.case
    rows = list(
        Prediction.objects.filter(
            model_version_id=prediction.model_version_id, case__clinic_id=case.clinic_id,
            case__removed_at__isnull=True, case__truth_label__gt="", case__truth_source__in=CONFIRMED,
        ).exclude(case__lesion_id=case.lesion_id).exclude(embedding=b"")
        .select_related("case", "case__feedback").only(
            "embedding", "case__id", "case__truth_label", "case__truth_source", "case__feedback")
    )
    vectors = [reference.decode(r.embedding) for r in rows]
    keep = [i for i, v in enumerate(vectors) if v is not None and len(v) == len(query)]
    if not keep:
        return [], gettext("No case of your clinic with a confirmed truth (histopathology, consensus or follow-up) "
                           "has been classified by this model version yet.")
    library = reference.normalise(np.stack([vectors[i] for i in keep]))
    found, sims = reference.nearest(query, library, k)
    out = []
    for j, sim in zip(found.tolist(), sims.tolist()):
        c = rows[keep[j]].case
        out.append(Neighbour(f"c{c.pk}", confirmed_diagnosis(c), sim,
                             gettext("your clinic, case %(pk)s (%(source)s)") % {
                                 "pk": c.pk, "source": c.get_truth_source_display().lower()},
                             reverse("clinic:case_image", args=[c.pk]) + "?size=thumb",
                             reverse("clinic:case_image", args=[c.pk]), reverse("clinic:case_detail", args=[c.pk])))
    return out, ""


def similar_to(prediction: Prediction | None, k: int | None = None) -> Similar | None:
    """The nearest confirmed lesions to a prediction's image; None without a prediction."""
    if prediction is None:
        return None
    k = k or settings.REFERENCE_NEIGHBOURS
    query = reference.decode(prediction.embedding)
    if query is None:
        message = gettext("This result has no embedding (it was classified before embeddings were kept, or by a "
                          "runtime that gives no features), so similar lesions cannot be looked up for it.")
        return Similar([], [], message, message)
    dataset, dataset_message, hidden = _dataset_neighbours(prediction, query, k)
    clinic, clinic_message = _clinic_neighbours(prediction, query, k)
    return Similar(dataset, clinic, dataset_message, clinic_message, hidden)


_heads: dict[Path, tuple[float, object]] = {}


def differential_probabilities(prediction: Prediction | None) -> dict[str, float] | None:
    """The prediction's differential, {class key: probability}: as the worker stored it, else from its
    embedding with the version's head when that was fitted after the prediction was made (numpy only);
    None when there is neither."""
    if prediction is None:
        return None
    if prediction.differential:
        return {k: float(v) for k, v in prediction.differential.items() if k in reference.DIFFERENTIAL}
    query = reference.decode(prediction.embedding)
    version = prediction.model_version
    path = differential.head_path(version.path)
    if query is None or not path.is_file():
        return None
    try:
        mtime = path.stat().st_mtime
        with _lock:
            if path not in _heads or _heads[path][0] != mtime:
                _heads[path] = (mtime, differential.load(version.path, version.weights_version))
            head = _heads[path][1]
    except (OSError, differential.DifferentialError) as exc:
        log.warning("differential of prediction %s: %s", prediction.pk, exc)
        return None
    if head is None or head.weight.shape[1] != len(query):
        return None
    return head.as_dicts(query)[0]


def shown_percent(p: float) -> str:
    """A differential probability as the pages and the report show it: never 0% or 100% (the head is a
    model of 7 classes fitted on a few thousand images, not a certainty), "<1%" and ">99%" at the ends."""
    if p < 0.01:
        return "<1%"
    if p > 0.99:
        return ">99%"
    return f"{round(100 * p)}%"


def differential_of(prediction: Prediction | None) -> list[tuple[str, float, str]] | None:
    """``differential_probabilities`` as (class words, probability, shown percent), most likely first."""
    found = differential_probabilities(prediction) or {}
    return sorted(((class_words(k), p, shown_percent(p)) for k, p in found.items()),
                  key=lambda r: -r[1]) or None


def differential_disagreement(prediction: Prediction | None) -> str:
    """A sentence when the differential's most likely class and the malignancy decision point different ways
    (a malignant class beside a benign decision, or the reverse); "" when they agree or there is none."""
    found = differential_probabilities(prediction) or {}
    if not found or prediction is None:
        return ""
    top = max(found, key=found.get)
    malignant = top in reference.MALIGNANT_CLASSES
    if malignant == (prediction.decision == "malignant"):
        return ""
    return gettext("The differential's most likely class, %(top)s, is %(kind)s, while the decision at the threshold "
                   "is %(decision)s: the two come from different parts of the network and disagree here; weigh "
                   "both.") % {"top": class_words(top).lower(), "decision": prediction.decision_display,
                               "kind": DECISION_WORDS["malignant" if malignant else "benign"]}


def reference_image_path(version, position: int) -> Path:
    """The dataset image at ``position`` of a version's index, checked to lie inside its dataset folder;
    LookupError when it may not be shown or is not there."""
    try:
        index = load_index(version)
    except reference.LibraryUnavailable as exc:
        raise LookupError(str(exc)) from None
    if not 0 <= position < len(index.keys):
        raise LookupError("no such reference image")
    if not settings.REFERENCE_NONCOMMERCIAL and not reference.source_info(str(index.sources[position]))[2]:
        raise LookupError("this reference image's licence does not allow showing it here")
    root = Path(index.meta.get("dataset", "")).resolve()
    path = (root / str(index.keys[position])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise LookupError("the reference image is not on this server")
    return path
