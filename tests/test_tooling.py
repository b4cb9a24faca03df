"""The test tooling's own output is honest: pip-audit's summary, and logs without noise."""

import logging
import sys

from tests.pip_audit_summary import summarise


def test_audit_summary_says_when_nothing_was_checked():
    skipped = {"name": "django", "version": "5.2.19", "skip_reason": "Dependency not found on PyPI and could not be audited"}
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
