"""The translation catalogues (locale/<lang>/LC_MESSAGES/django.po), made from the code by makemessages.

    python manage.py catalogues            # bring the catalogues up to date with the code (then translate)
    python manage.py catalogues --check    # exit 1 if out of date, untranslated, fuzzy or with a wrong placeholder
    python manage.py catalogues --compile  # compile them (.mo, not committed), as `make run` and `make test` do

The options are fixed here so that the check and the update make the same files: file names without line
numbers (a moved line does not date a catalogue), no obsolete entries. docs/languages.md says how to translate.
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

IGNORED = [".venv", "var", "runs", "tests", "benchmarks", "docs", "docker", "node_modules", "test-artifacts"]
HEADER_DATE = re.compile(r'^"POT-Creation-Date: .*\\n"\n', re.M)


def languages() -> list[str]:
    return [code for code, _ in settings.LANGUAGES if code != "en"]


def catalogue(language: str) -> Path:
    return Path(settings.LOCALE_PATHS[0]) / language / "LC_MESSAGES" / "django.po"


def make() -> None:
    call_command("makemessages", locale=languages(), ignore_patterns=IGNORED, add_location="file",
                 no_obsolete=True, verbosity=0)


def problems(text: str) -> list[str]:
    """Entries with no translation, or marked fuzzy (a changed source string whose old translation
    gettext would not use), in a catalogue's text."""
    import polib

    found = []
    for entry in polib.pofile(text):
        if entry.obsolete:
            continue
        if "fuzzy" in entry.flags:
            found.append(f"fuzzy: {entry.msgid!r}")
        elif entry.msgid_plural:
            if not all(entry.msgstr_plural.get(i) for i in range(2)):
                found.append(f"untranslated: {entry.msgid!r}")
        elif not entry.msgstr:
            found.append(f"untranslated: {entry.msgid!r}")
    return found


class Command(BaseCommand):
    help = "Update, check or compile the French and German catalogues."

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="fail on an out-of-date or incomplete catalogue")
        parser.add_argument("--compile", action="store_true", help="compile the catalogues (.mo)")

    def handle(self, *args, check=False, compile=False, **options):
        if compile:
            call_command("compilemessages", locale=languages(), ignore_patterns=IGNORED, verbosity=0)
            return
        if not check:
            make()
            for language in languages():
                for problem in problems(catalogue(language).read_text(encoding="utf-8")):
                    self.stdout.write(f"{language}: {problem}")
            return
        with tempfile.TemporaryDirectory() as keep:
            before = {}
            for language in languages():
                before[language] = catalogue(language).read_text(encoding="utf-8")
                shutil.copy(catalogue(language), Path(keep) / f"{language}.po")
            try:
                make()
                after = {language: catalogue(language).read_text(encoding="utf-8") for language in languages()}
            finally:
                for language in languages():
                    shutil.copy(Path(keep) / f"{language}.po", catalogue(language))
        failures = []
        for language in languages():
            if HEADER_DATE.sub("", before[language]) != HEADER_DATE.sub("", after[language]):
                failures.append(f"{language}: out of date with the code (run `python manage.py catalogues`)")
            failures += [f"{language}: {problem}" for problem in problems(before[language])]
            # A translation whose %(name)s placeholders differ from the source's would fail at run time.
            checked = subprocess.run(["msgfmt", "--check-format", "-o", "/dev/null", str(catalogue(language))],
                                     capture_output=True, text=True)
            if checked.returncode:
                failures.append(f"{language}: msgfmt --check-format: {checked.stderr.strip()}")
        if failures:
            raise CommandError("\n".join(failures))
        self.stdout.write("catalogues up to date and complete: " + ", ".join(languages()))
