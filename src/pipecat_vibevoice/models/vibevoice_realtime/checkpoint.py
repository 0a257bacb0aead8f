"""Official checkpoint names → our modules, and loading from a directory or the HF cache.

The official ``model.safetensors`` uses the names of Microsoft's modules. We keep the
files untouched and translate names while loading; :func:`official_to_local` is the
single mapping, and a test checks that it sends every parameter of the real 0.5B model
(names and shapes) onto exactly our model's state dict.

This module sits above :mod:`.modeling_vibevoice_realtime` (it builds the model; the
model knows nothing of loading). It imports torch, safetensors and the model only inside
:func:`load_model`: torch is an optional extra, and the engine imports this module at
start-up for :func:`resolve_model_dir` and :class:`CheckpointNotFoundError`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from .configuration_vibevoice_realtime import VibeVoiceRealtimeConfig

if TYPE_CHECKING:
    import torch

    from .modeling_vibevoice_realtime import VibeVoiceRealtimeModel


class CheckpointNotFoundError(FileNotFoundError):
    """No usable checkpoint where one was asked for; the message says what is missing."""


#: Official prefixes we do not build, with why: the realtime model only decodes.
IGNORED_PREFIXES = ("model.acoustic_tokenizer.encoder.",)

_HEAD_RENAMES = (
    (re.compile(r"^t_embedder\.mlp\.0\."), "timestep_proj.fc1."),
    (re.compile(r"^t_embedder\.mlp\.2\."), "timestep_proj.fc2."),
    (re.compile(r"^layers\.(\d+)\.adaLN_modulation\.1\."), r"layers.\1.linear."),
    (re.compile(r"^final_layer\.adaLN_modulation\.1\."), "final_layer.linear_1."),
    (re.compile(r"^final_layer\.linear\."), "final_layer.linear_2."),
)
_CONNECTOR_RENAMES = {"fc1.": "linear_1.", "norm.": "act.", "fc2.": "linear_2."}


def _decoder_name(rest: str) -> str:
    match = re.match(r"^upsample_layers\.0\.0\.conv\.conv\.(.+)$", rest)
    if match:
        return f"stem.conv.conv.{match.group(1)}"
    match = re.match(r"^upsample_layers\.(\d+)\.0\.convtr\.convtr\.(.+)$", rest)
    if match:
        return f"conv_layers.{int(match.group(1)) - 1}.convtr.convtr.{match.group(2)}"
    match = re.match(r"^stages\.(\d+)\.(\d+)\.(.+)$", rest)
    if match:
        stage, block, tail = int(match.group(1)), match.group(2), match.group(3)
        tail = re.sub(r"^mixer\.conv\.conv\.conv\.", "mixer.conv.", tail)
        if stage == 0:
            return f"stem.stage.{block}.{tail}"
        return f"conv_layers.{stage - 1}.stage.{block}.{tail}"
    match = re.match(r"^head\.conv\.conv\.(.+)$", rest)
    if match:
        return f"head.conv.{match.group(1)}"
    raise KeyError(rest)


def official_to_local(name: str) -> str | None:
    """Our state-dict key for an official one; ``None`` for parts we deliberately skip.

    Raises ``KeyError`` for a name we do not know, so a checkpoint from a different
    model fails loudly instead of loading half its weights.
    """
    if name.startswith(IGNORED_PREFIXES):
        return None
    if name.startswith("tts_eos_classifier."):
        return name
    if not name.startswith("model."):
        raise KeyError(name)
    rest = name[len("model.") :]
    for prefix in ("language_model.", "tts_language_model.", "tts_input_types."):
        if rest.startswith(prefix):
            return rest
    if rest in ("speech_scaling_factor", "speech_bias_factor"):
        return rest
    if rest.startswith("acoustic_connector."):
        tail = rest[len("acoustic_connector.") :]
        for old, new in _CONNECTOR_RENAMES.items():
            if tail.startswith(old):
                return "acoustic_connector." + new + tail[len(old) :]
        raise KeyError(name)
    if rest.startswith("prediction_head."):
        tail = rest[len("prediction_head.") :]
        for pattern, replacement in _HEAD_RENAMES:
            if pattern.match(tail):
                return "prediction_head." + pattern.sub(replacement, tail)
        return "prediction_head." + tail
    if rest.startswith("acoustic_tokenizer.decoder."):
        try:
            return "acoustic_decoder." + _decoder_name(rest[len("acoustic_tokenizer.decoder.") :])
        except KeyError:
            raise KeyError(name) from None
    raise KeyError(name)


# -- locating weights ---------------------------------------------------------------------


def is_checkpoint_dir(path: Path) -> bool:
    """A directory with ``config.json`` and safetensors weights."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve_model_dir(
    model_path: str, allow_download: bool = False, cache_dir: str | None = None
) -> Path:
    """Local checkpoint directory for ``model_path`` (a directory or a hub id).

    A hub id resolves from the local Hugging Face cache only, unless ``allow_download``.
    Raises :class:`CheckpointNotFoundError` saying what is missing; never touches the network
    when downloads are off.
    """
    path = Path(model_path).expanduser()
    if path.exists():
        if is_checkpoint_dir(path):
            return path
        raise CheckpointNotFoundError(
            f"VibeVoice model_path {path} is not a checkpoint directory "
            "(needs config.json and *.safetensors)"
        )
    if model_path.count("/") != 1 or model_path.startswith((".", "/", "~")):
        raise CheckpointNotFoundError(
            f"VibeVoice model_path {model_path!r} is neither a directory nor a hub id"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise CheckpointNotFoundError(f"huggingface_hub is missing: {exc}") from exc
    patterns = ["*.json", "*.safetensors", "*.pt", "*.txt"]
    try:
        snapshot = snapshot_download(
            model_path,
            cache_dir=cache_dir,
            local_files_only=not allow_download,
            allow_patterns=patterns,
        )
    except Exception as exc:  # LocalEntryNotFoundError, offline errors, auth...
        how = (
            "download failed"
            if allow_download
            else "not in the local Hugging Face cache and downloads are off (allow_download)"
        )
        raise CheckpointNotFoundError(f"VibeVoice weights {model_path!r}: {how}: {exc}") from exc
    snapshot_path = Path(snapshot)
    if not is_checkpoint_dir(snapshot_path):
        raise CheckpointNotFoundError(
            f"VibeVoice weights {model_path!r} in the HF cache are incomplete "
            f"({snapshot_path} lacks config.json or *.safetensors)"
        )
    return snapshot_path


def weight_files(model_dir: Path) -> list[Path]:
    """Safetensors files of a checkpoint (sharded via the index, or single)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(model_dir.glob("*.safetensors"))


# -- loading ------------------------------------------------------------------------------


def from_pretrained(
    path_or_hub_id: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    allow_download: bool = False,
    cache_dir: str | None = None,
) -> VibeVoiceRealtimeModel:
    """Load an official checkpoint from a directory or a hub id.

    A hub id resolves from the local Hugging Face cache unless ``allow_download``;
    see :func:`resolve_model_dir` and :func:`load_model`.
    """
    return load_model(resolve_model_dir(path_or_hub_id, allow_download, cache_dir), device, dtype)


def load_model(
    model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> VibeVoiceRealtimeModel:
    """Build :class:`VibeVoiceRealtimeModel` from an official checkpoint directory.

    The model is built on the ``meta`` device (no wasted random init of ~1B parameters)
    and the checkpoint tensors are assigned into it, converted to ``dtype`` on
    ``device``. Every parameter must be provided: a missing one is an error, not a
    silently random weight.
    """
    import torch
    from safetensors import safe_open

    from .modeling_vibevoice_realtime import VibeVoiceRealtimeModel

    model_dir = Path(model_dir)
    dtype = dtype or torch.float32
    config = VibeVoiceRealtimeConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = VibeVoiceRealtimeModel(config)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    skipped = 0
    unknown: list[str] = []
    for file in weight_files(model_dir):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                try:
                    local = official_to_local(name)
                except KeyError:
                    local = ""
                if not local or local not in expected:
                    # Encoder (by design) or a tensor we do not know: extras cannot hurt
                    # inference, so they are skipped and counted; *missing* ones fail below.
                    skipped += 1
                    if local == "":
                        unknown.append(name)
                    continue
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != tuple(expected[local].shape):
                    raise ValueError(
                        f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(expected[local].shape)}"
                    )
                keep_fp32 = local in ("speech_scaling_factor", "speech_bias_factor")
                state[local] = tensor.to(device=device, dtype=torch.float32 if keep_fp32 else dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(
            f"checkpoint in {model_dir} lacks {len(missing)} tensors, e.g. {missing[:3]}"
        )
    if unknown:
        logger.warning(
            f"VibeVoice checkpoint has {len(unknown)} tensors this model does not use, "
            f"e.g. {unknown[:3]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.rebuild_runtime_buffers()
    model.eval()
    logger.info(
        f"VibeVoice-Realtime loaded from {model_dir}: {len(state)} tensors on {device} "
        f"({dtype}), {skipped} unused tensors (acoustic encoder) skipped"
    )
    return model
