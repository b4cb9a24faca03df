"""Benign/malignant classification of dermoscopic images with VGG16.

Plain PyTorch: this package never imports Django. It takes images or paths and
returns plain data, so the web app, the Celery workers and the command-line
tools share one implementation.

Importing the package (or ``classifier.modelfile``, ``classifier.artefacts``) does not import
PyTorch: the web process reads model files' headers and fast-path reports without it; only what
runs a model (``Predictor``, training) loads it, on first use.
"""

from classifier.modelfile import ModelFileError, ModelMetadata, load_model_file, save_model_file

__all__ = [
    "ModelFileError",
    "ModelMetadata",
    "Prediction",
    "Predictor",
    "load_model_file",
    "save_model_file",
]


def __getattr__(name):
    if name in ("Prediction", "Predictor"):
        from classifier import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'classifier' has no attribute {name!r}")
