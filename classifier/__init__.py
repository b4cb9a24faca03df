"""Benign/malignant classification of dermoscopic images with VGG16.

Plain PyTorch: this package never imports Django. It takes images or paths and
returns plain data, so the web app, the Celery workers and the command-line
tools share one implementation.
"""

from classifier.modelfile import ModelFileError, ModelMetadata, load_model_file, save_model_file
from classifier.predictor import Prediction, Predictor

__all__ = [
    "ModelFileError",
    "ModelMetadata",
    "Prediction",
    "Predictor",
    "load_model_file",
    "save_model_file",
]
