"""Where a model file's fast-path artefacts live and how their report is read, and the locked test split's
ledger of model files (no PyTorch needed).

Beside ``<name>.safetensors`` classifier.training.fastpath writes ``<name>.onnx``, ``<name>.int8.onnx`` and
the report ``<name>.fast.json``; the web process reads the report here, workers run the artefacts
through classifier.runtime.
"""

import fcntl
import hashlib
import json
import os
import platform
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


def cpu_signature() -> dict:
    """What a speed measured on this CPU depends on: its model, its instruction-set flags, the cores torch may
    use and the runtimes' versions. Measurements are kept per signature (a model folder may be shared by
    workers on other machines)."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    versions = []
    for module in ("torch", "onnxruntime"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            pass
    threads = os.environ.get("SKINWEB_INFERENCE_THREADS", "") or str(os.cpu_count() or 1)
    key = hashlib.sha256("|".join([name, flags, threads, *versions]).encode()).hexdigest()[:12]
    return {"name": name, "threads": threads, "versions": versions, "key": key}


def speed_path(model_path) -> Path:
    """Where the workers' own runtime measurements of a model are kept (one entry per CPU signature)."""
    return Path(model_path).with_suffix("").with_suffix(".speeds.json")


def read_speeds(model_path) -> dict:
    try:
        data = json.loads(speed_path(model_path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_speed(model_path, signature: dict, entry: dict) -> dict:
    """Keep ``entry`` (a CPU's timing of the accepted runtimes and its choice) beside the model, unless another
    process on a CPU of the same signature recorded one for the same fast-path report first: that one is kept
    and returned, so that every worker of one kind of CPU runs the same runtime (two timings made at once,
    each under the other's load, need not agree). Returns the entry in force."""
    path = speed_path(model_path)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        data = read_speeds(model_path)
        known = data.get(signature["key"]) or {}
        if known.get("report") == entry.get("report") and known.get("chosen"):
            return known
        data[signature["key"]] = {**entry, "cpu": signature["name"], "threads": signature["threads"],
                                  "versions": signature["versions"]}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
        return data[signature["key"]]
