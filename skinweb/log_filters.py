"""Logging filters named in settings.LOGGING."""

import logging


class NoTracebackBelow500(logging.Filter):
    """django.request logs every 4xx with the exception that caused it (a 403 is a PermissionDenied):
    the status line is worth keeping, the traceback of an expected refusal is noise."""

    def filter(self, record):
        if getattr(record, "status_code", 500) < 500:
            record.exc_info = record.exc_text = None
        return True
