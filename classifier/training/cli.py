"""What the model-file commands (calibrate, lesioncheck, soup, fastpath) share at their end."""

import json
import logging
import sys


def run_and_print(work, errors: tuple = ()) -> int:
    """Log to stderr, run ``work()`` and print what it returns as JSON (exit status 0); a missing or
    unusable model file, dataset or file (ModelFileError, DatasetError, OSError, or one of ``errors``)
    is one line on stderr and exit status 2."""
    from classifier.modelfile import ModelFileError
    from classifier.training.data import DatasetError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        result = work()
    except (ModelFileError, DatasetError, OSError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
