"""Classify images: python -m classifier.predict --model MODEL IMAGE... (one JSON line per image)."""

import argparse
import json
import os
import sys

from classifier.modelfile import DEFAULT_MODEL_PATH, ModelFileError
from classifier.predictor import Predictor

DEFAULT_MODEL_ENV = "SKINWEB_MODEL"


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    parser.add_argument("--model", default=os.environ.get(DEFAULT_MODEL_ENV, str(DEFAULT_MODEL_PATH)),
                        help="model file (default: $SKINWEB_MODEL, else the starter model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG)")
    return parser


def main(args) -> int:
    try:
        predictor = Predictor.from_file(args.model, device=args.device)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in args.images:
        try:
            (result,) = predictor.predict([path])
        except (OSError, ValueError) as exc:
            print(json.dumps({"image": path, "error": str(exc)}))
            status = 1
            continue
        print(json.dumps({"image": path, **result.as_dict()}))
    return status


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
