"""Where a model file's fast-path artefacts live and how their report is read, and the locked test split's
ledger of model files (no PyTorch needed).

Beside ``<name>.safetensors`` classifier.training.fastpath writes ``<name>.onnx``, ``<name>.int8.onnx`` and
the report ``<name>.fast.json``; the web process reads the report here, workers run the artefacts
through classifier.runtime.
"""

import json
from pathlib import Path

# /2: the ONNX graphs also give the pooled features (the lesion check); /3: the guard compares the
# worker's decisions (averaged over the model's views), not a single view's; /4: with the model's cascade
# (classifier.cascade), on the views each runtime runs. An older build is rebuilt.
REPORT_FORMAT = "skinweb-fastpath/4"


def artefact_paths(model_path) -> dict[str, Path]:
    model_path = Path(model_path)
    stem = model_path.with_suffix("")
    return {
        "onnx-fp32": stem.with_suffix(".onnx"),
        "onnx-int8": stem.with_suffix(".int8.onnx"),
        "report": stem.with_suffix(".fast.json"),
    }


def cascade_key(metadata) -> dict | None:
    """What of a model file's cascade the fast-path guard depends on (None without one)."""
    spec = metadata.cascade or {}
    if not spec or metadata.views <= 1:
        return None
    return {k: spec[k] for k in ("stages", "margins", "order")}


def read_report(model_path) -> dict | None:
    """The fast-path report for a model file, or None when there is none, it is unreadable, or its
    guard decided the check images otherwise than the model does: on other orientations (a
    rehearsal's) or under another cascade (the file's cascade was refitted since)."""
    from classifier.modelfile import ModelFileError, read_metadata

    path = artefact_paths(model_path)["report"]
    try:
        report = json.loads(path.read_text())
        meta = read_metadata(model_path)
    except (OSError, ValueError, ModelFileError):
        return None
    if report.get("format") != REPORT_FORMAT or report.get("views") != meta.views:
        return None
    return report if report.get("cascade") == cascade_key(meta) else None


# The locked test split's ledger (classifier.training.evaluate --split locked-test): one JSON object
# per model file scored on it, keyed by the file's sha256; the model pages read it.
LOCKED_TEST_LEDGER = Path(__file__).resolve().parent / "models" / "locked-test.jsonl"


def read_ledger(path=LOCKED_TEST_LEDGER) -> dict[str, dict]:
    """The ledger's entries by model file sha256 ({} without a ledger; unreadable lines are skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    entries = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            entries.setdefault(entry["sha256"], entry)  # the first score of a file is its score
    return entries
