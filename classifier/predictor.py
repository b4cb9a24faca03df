"""Load a model file once and classify images with it."""

import dataclasses
import time
from pathlib import Path

import torch
from PIL import Image

from classifier.model import build_model
from classifier.modelfile import ModelFileError, ModelMetadata, load_model_file
from classifier.presets import ClassificationPresetEval


@dataclasses.dataclass
class Prediction:
    probability: float  # of malignancy
    decision: str  # "benign" or "malignant", at ``threshold``
    threshold: float
    model_version: str
    ms: float  # wall time per image, preprocessing included

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


class Predictor:
    def __init__(self, model: torch.nn.Module, metadata: ModelMetadata, device: torch.device):
        self.metadata = metadata
        self.device = device
        self.model = model.to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.transform = ClassificationPresetEval(metadata.input_size, metadata.mean, metadata.std)

    @classmethod
    def from_file(cls, path, device: str = "auto") -> "Predictor":
        state, metadata = load_model_file(path)
        model = build_model(metadata.arch, pretrained="none")
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except RuntimeError as exc:
            raise ModelFileError(f"{Path(path).name}: weights do not fit a {metadata.arch} ({exc})") from exc
        return cls(model, metadata, resolve_device(device))

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def threshold(self) -> float:
        return float(self.metadata.threshold)

    def decide(self, probability: float) -> str:
        return self.metadata.class_names[1] if probability >= self.threshold else self.metadata.class_names[0]

    def load_image(self, source) -> Image.Image:
        """Open a path or file object as RGB, decoding large JPEGs at reduced scale."""
        img = source if isinstance(source, Image.Image) else Image.open(source)
        if img.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing: a 4000 px
            # dermoscopy image needs no full decode to become 224 px.
            img.draft("RGB", (self.metadata.input_size * 2, self.metadata.input_size * 2))
        return img.convert("RGB")

    @torch.inference_mode()
    def probabilities(self, images) -> list[float]:
        batch = torch.stack([self.transform(self.load_image(im)) for im in images]).to(self.device)
        if self.device.type == "cuda":
            batch = batch.to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                logits = self.model(batch)
        else:
            logits = self.model(batch)
        return torch.sigmoid(logits.float()).cpu().tolist()

    def predict(self, images) -> list[Prediction]:
        images = list(images)
        if not images:
            return []
        start = time.perf_counter()
        probs = self.probabilities(images)
        ms = (time.perf_counter() - start) * 1000 / len(images)
        return [
            Prediction(
                probability=p,
                decision=self.decide(p),
                threshold=self.threshold,
                model_version=self.version,
                ms=round(ms, 1),
            )
            for p in probs
        ]
