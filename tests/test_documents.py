"""The documents stay short, current and connected: budgets, generated figures, links, commands."""

import importlib.util
import re

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "classifier" / "models" / "MODEL_CARD.md", *sorted((ROOT / "docs").glob("*.md"))]


def words(path) -> int:
    return len(path.read_text().split())


@pytest.mark.parametrize("name", ["README.md", "classifier/models/MODEL_CARD.md"])
def test_the_readme_and_the_model_card_keep_their_budget(name):
    assert words(ROOT / name) <= 1500


def test_the_model_card_is_what_its_command_writes():
    """Its figures come from the model file, the locked split's ledger and the reported figures; a
    hand edit, or a new ledger entry without regenerating, fails here."""
    from classifier.training import card

    committed = (ROOT / "classifier" / "models" / "MODEL_CARD.md").read_text()
    models = ROOT / "classifier" / "models"
    assert committed == card.render(models / "starter.safetensors",
                                    operating_point=models / "starter.operating-point.json"), (
        f"regenerate it: {card.COMMAND}")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name}: {target}"


def test_every_documented_python_command_exists():
    """``python -m MODULE`` and ``manage.py COMMAND`` in the documents name modules and commands that exist."""
    text = "\n".join(d.read_text() for d in DOCS)
    modules = set(re.findall(r"python3? -m ([a-z_][\w.]*)", text))
    assert {"classifier.training.evaluate", "classifier.training.card", "benchmarks.stack"} <= modules
    for name in sorted(modules - {"pip", "venv", "http.server"}):
        assert importlib.util.find_spec(name) is not None, name
    commands = set(re.findall(r"manage\.py ([a-z_]+)", text))
    for name in sorted(commands):
        found = list(ROOT.glob(f"skinweb/*/management/commands/{name}.py"))
        assert found or name in {"migrate", "check", "createsuperuser", "runserver", "collectstatic"}, name
