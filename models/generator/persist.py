"""A trained generator as a plain model folder: config.json + model.safetensors, no pickled code.

config.json holds the GeneratorConfig, the VideoAR config when the model samples next-scale, the
FAR config when it is a FAR model, and free-form metadata (schedule, class names, lineage). The
weights are named as the module's own `state_dict()` names them: a VideoAR or FAR folder keeps
the transformer under `generator.`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.generator.config import FARConfig, GeneratorConfig, VideoARConfig
from models.generator.far import FAR
from models.generator.transformer import Generator
from models.generator.videoar import VideoAR

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KIND = "generator"


def unwrap_generator(model: nn.Module) -> tuple[Generator, VideoARConfig | None]:
    """The plain Generator inside `model` and its VideoAR config (None for a plain generator or
    a FAR model)."""
    if isinstance(model, VideoAR):
        return model.generator, model.config
    if isinstance(model, FAR):
        return model.generator, None
    if isinstance(model, Generator):
        return model, None
    raise TypeError(f"{type(model).__name__} is neither a Generator, a VideoAR nor a FAR model")


def build_generator(
    config: GeneratorConfig,
    videoar: VideoARConfig | None = None,
    far: FARConfig | None = None,
) -> nn.Module:
    """A fresh Generator, wrapped in VideoAR or FAR when that config is given."""
    if videoar is not None and far is not None:
        raise ValueError("a generator is VideoAR or FAR, not both: give one config")
    generator = Generator(config)
    if far is not None:
        return FAR(generator, far)
    return VideoAR(generator, videoar) if videoar is not None else generator


def generator_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as contiguous CPU tensors (safetensors-ready)."""
    return {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}


def generator_config_json(model: nn.Module, metadata: dict[str, Any] | None = None) -> str:
    """The config.json text of `model` (a Generator, a VideoAR or a FAR)."""
    generator, videoar = unwrap_generator(model)
    document = {
        "kind": KIND,
        "generator": generator.config.model_dump(mode="json"),
        "videoar": videoar.model_dump(mode="json") if videoar is not None else None,
        "far": model.config.model_dump(mode="json") if isinstance(model, FAR) else None,
        "metadata": metadata or {},
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def save_generator(
    model: nn.Module, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write `model.safetensors` and `config.json` of a Generator, VideoAR or FAR into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(generator_state(model), str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(generator_config_json(model, metadata))
    return directory


def read_generator_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a generator folder; ValueError when it is not one."""
    path = Path(directory) / CONFIG_FILE
    document = json.loads(path.read_text())
    if document.get("kind") != KIND:
        raise ValueError(f"{path}: not an arvid generator config (kind={document.get('kind')!r})")
    return document


def load_generator_from_dir(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the Generator (or VideoAR, or FAR) of a model folder and load its weights (no
    unpickling)."""
    document = read_generator_config(directory)
    videoar, far = document.get("videoar"), document.get("far")
    model = build_generator(
        GeneratorConfig.model_validate(document["generator"]),
        VideoARConfig.model_validate(videoar) if videoar is not None else None,
        FARConfig.model_validate(far) if far is not None else None,
    )
    model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE), device=str(device)))
    return model.to(device)
