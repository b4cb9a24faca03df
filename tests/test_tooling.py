"""The test tooling's own output is honest: pip-audit's summary, and logs without noise."""

import logging
import sys

from tests.pip_audit_summary import summarise


def test_audit_summary_says_when_nothing_was_checked():
    skipped = {
        "name": "django",
        "version": "5.2.19",
        "skip_reason": "Dependency not found on PyPI and could not be audited",
    }
    lines, status = summarise({"dependencies": [skipped, {**skipped, "name": "torch"}], "fixes": []})
    assert status == 0
    assert lines[0].startswith("pip-audit: 0 of 2 pinned packages checked")
    assert "NOT CHECKED: 2 package(s)" in lines[1] and "nothing was checked" in lines[1]
    assert not any("no known vulnerabilities" in line for line in lines)


def test_audit_summary_fails_on_a_vulnerability_and_passes_clean():
    vulnerable = {"name": "pillow", "version": "1.0", "vulns": [{"id": "PYSEC-1"}]}
    lines, status = summarise({"dependencies": [vulnerable, {"name": "x", "version": "1", "vulns": []}]})
    assert status == 1 and "VULNERABLE pillow 1.0: PYSEC-1" in lines
    lines, status = summarise({"dependencies": [{"name": "x", "version": "1", "vulns": []}]})
    assert status == 0 and lines[-1] == "no known vulnerabilities in the packages checked"


def test_a_refusal_is_logged_once_without_a_traceback(settings):
    from skinweb.log_filters import NoTracebackBelow500

    # Django's own config adds a console handler under DEBUG; ours replaces it and stops propagation.
    assert settings.LOGGING["loggers"]["django"] == {"handlers": ["console"], "level": "INFO", "propagate": False}
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["no_4xx_traceback"]
    try:
        raise PermissionError("denied")
    except PermissionError:
        exc_info = sys.exc_info()
    for status, kept in ((403, False), (404, False), (500, True)):
        record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Forbidden", None, exc_info)
        record.status_code = status
        assert NoTracebackBelow500().filter(record)
        assert (record.exc_info is not None) == kept


def import_graph() -> dict[str, set[str]]:
    """Which of the project's modules each module imports (anywhere in it, functions included): every
    name of a ``from X import a, b`` counts (X.a where that is a module, else X), relative imports too."""
    import ast

    from tests.conftest import ROOT

    modules = {}
    for package in ("classifier", "skinweb", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                modules[name] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    # The graph is read, not empty, and every name of one import line counts.
    assert {"classifier.runtime", "classifier.artefacts", "classifier.lesioncheck"} <= graph["classifier.predictor"]

    def path_back(start):
        seen, stack = set(), [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    loops = [loop for m in sorted(graph) if (loop := path_back(m))]
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_the_classifier_never_imports_django_or_the_app():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("classifier"):
            assert not {t for t in targets if t.startswith(("skinweb", "benchmarks"))}, name


def test_the_runtime_imports_nothing_from_the_tools():
    """What a worker imports on every prediction (``classifier`` outside ``classifier.training``) never
    reaches the training tools, directly or through another module, function-level imports included."""
    graph = import_graph()
    runtime = {m for m in graph if m.startswith("classifier") and not m.startswith("classifier.training")}
    assert {"classifier.predictor", "classifier.runtime", "classifier.model", "classifier.explain"} <= runtime
    assert "classifier.training.fastpath" in graph

    def reached(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    arrows = {m: sorted(t for t in reached(m) if t.startswith("classifier.training")) for m in sorted(runtime)}
    assert not {m: t for m, t in arrows.items() if t}, "the runtime reaches the tools"
