"""Finding and loading a VibeVoice-1.5B checkpoint in the transformers format.

The directory is what ``save_pretrained`` writes for the model and the processor
(e.g. a local copy of ``vibevoice/VibeVoice-1.5B-hf``): ``config.json`` with
``model_type`` ``vibevoice``, safetensors weights, and the processor's files (tokenizer,
feature extractor config, chat template). torch and transformers are imported only in
:func:`load`, so the engine can check a directory on a machine without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..vibevoice_realtime.checkpoint import CheckpointNotFoundError, resolve_model_dir

__all__ = ["CheckpointNotFoundError", "LoadedCheckpoint", "check_model_dir", "load", "resolve"]

#: ``model_type`` of transformers' VibeVoice (1.5B and 7B share the architecture).
MODEL_TYPE = "vibevoice"


def check_model_dir(path: Path) -> None:
    """Raise :class:`CheckpointNotFoundError` unless ``path`` holds a VibeVoice (1.5B) checkpoint."""
    config_file = path / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointNotFoundError(f"cannot read {config_file}: {exc}") from exc
    if model_type != MODEL_TYPE:
        raise CheckpointNotFoundError(
            f"{path} holds a {model_type!r} model, not VibeVoice-1.5B (model_type "
            f"{MODEL_TYPE!r}); point model_path at a transformers-format directory such as "
            "a local copy of vibevoice/VibeVoice-1.5B-hf"
        )
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise CheckpointNotFoundError(
            f"{path} has no tokenizer files: save the processor there too "
            "(VibeVoiceProcessor.save_pretrained)"
        )


def resolve(model_path: str, allow_download: bool = False, cache_dir: str | None = None) -> Path:
    """The checkpoint directory for ``model_path`` (a directory, or a hub id in the local cache)."""
    path = resolve_model_dir(model_path, allow_download, cache_dir)
    check_model_dir(path)
    return path


@dataclass
class LoadedCheckpoint:
    """The model (eval mode, on its device) and its processor."""

    model: Any
    processor: Any

    @property
    def sample_rate(self) -> int:
        """Rate of the reference clips and of the audio the decoder makes."""
        return int(self.processor.feature_extractor.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Audio samples per latent (the acoustic tokenizer's compression)."""
        return int(self.model.config.audio_config.hop_length)


def load(path: Path, device: str, dtype: Any) -> LoadedCheckpoint:
    """Model and processor from ``path`` (blocking; no network: local files only)."""
    from transformers import VibeVoiceForConditionalGeneration, VibeVoiceProcessor

    processor = VibeVoiceProcessor.from_pretrained(str(path), local_files_only=True)
    model = VibeVoiceForConditionalGeneration.from_pretrained(
        str(path), dtype=dtype, local_files_only=True
    )
    model = model.to(device).eval()
    extractor_hop = int(getattr(processor.feature_extractor, "pad_to_multiple_of", 0) or 0)
    if extractor_hop and extractor_hop != model.config.audio_config.hop_length:
        raise CheckpointNotFoundError(
            f"{path}: the feature extractor pads clips to {extractor_hop} samples but the "
            f"acoustic tokenizer's hop is {model.config.audio_config.hop_length}"
        )
    return LoadedCheckpoint(model, processor)
