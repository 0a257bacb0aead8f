"""A voice from a reference clip: what of the clip the model needs, and nothing more.

transformers' processor normalises a clip (to -25 dB FS) and pads it to whole latents;
the model's ``get_audio_features`` runs the acoustic tokenizer's encoder on it, adds the
σ-VAE noise (``sample=True``, its default), shifts and scales the latents and projects
them into the language model's space, where they replace the prompt's audio tokens.

A :class:`VoicePrompt` keeps the encoder's output for the clip (one 64-value latent per
133 ms; no waveform) and how many audio tokens the processor gives it. Each utterance
then draws the σ-VAE noise from its own generator (:func:`voice_embeddings`), in the
order and shapes ``get_audio_features`` draws it, so a seeded utterance is reproducible
and equals transformers' ``generate`` on the clip after ``torch.manual_seed`` with the
same seed — without encoding the clip again for every sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..vibevoice_realtime.noise import TorchNoise

__all__ = ["VoicePrompt", "draw", "draw_like", "encode_voice", "voice_embeddings"]


@dataclass(frozen=True)
class VoicePrompt:
    """A reference voice as the model reads it.

    ``latents`` is the acoustic encoder's output for the clip, shape ``[1, tokens, D]``
    (before noise, shift and scale); ``tokens`` the number of audio placeholders the
    processor writes for the clip; ``seconds`` the clip's length (for logs and listings).
    """

    latents: torch.Tensor
    tokens: int
    seconds: float


def draw(
    noise: TorchNoise, shape: tuple[int, ...], dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """Standard-normal draws of ``dtype`` from the utterance's generator, moved to ``device``.

    The dtype matters: torch draws float64 and float32 differently, and transformers
    draws the σ-VAE noise in the model's dtype.
    """
    generator = noise.generator
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def draw_like(noise: TorchNoise, like: torch.Tensor) -> torch.Tensor:
    """Standard-normal values shaped *and strided* like ``like`` (``torch.randn_like``).

    torch fills a strided tensor in another order than a contiguous one, and the
    encoder's latents are a transposed view: the same draws need the same layout.
    """
    generator = noise.generator
    out = torch.empty_like(like, device=generator.device).normal_(generator=generator)
    return out.to(like.device)


@torch.inference_mode()
def encode_voice(model: Any, processor: Any, audio: np.ndarray) -> VoicePrompt:
    """Encode a mono clip at the processor's rate (blocking; one encoder pass).

    The clip goes through the processor's own feature extractor (normalisation, padding
    to whole latents), so the model sees it exactly as ``apply_chat_template`` would give
    it. The waveform is not kept.
    """
    extractor = processor.feature_extractor
    features = extractor(
        np.asarray(audio, dtype=np.float32),
        sampling_rate=extractor.sampling_rate,
        return_tensors="pt",
    )
    hop = int(model.config.audio_config.hop_length)
    tokens = int(math.ceil(float(features["padding_mask"].sum()) / hop))
    tower = model.model.audio_tower
    values = features["input_values"].to(tower.device, model.dtype)
    latents = tower.encode(values, sample=False).latents[:, :tokens]
    # clone() keeps the encoder's (transposed) strides, which the noise draws follow
    return VoicePrompt(
        latents=latents.clone(), tokens=tokens, seconds=len(audio) / extractor.sampling_rate
    )


@torch.inference_mode()
def voice_embeddings(
    model: Any, voice: VoicePrompt, noise: TorchNoise | None, sample: bool = True
) -> torch.Tensor:
    """The voice's rows of the prompt embeddings, ``[tokens, hidden]``.

    With ``sample`` the σ-VAE noise is added as the acoustic tokenizer's ``encode`` does:
    one scale per clip from N(0, vae_std), times a standard-normal draw per value.
    """
    latents = voice.latents
    if sample:
        if noise is None:
            raise ValueError("sampling the voice needs a noise source")
        std = model.model.audio_tower.config.vae_std * draw(
            noise, (latents.shape[0],), latents.dtype, latents.device
        )
        latents = latents + std[:, None, None] * draw_like(noise, latents)
    core = model.model
    features = (
        latents + core.latent_bias_factor.to(latents.device)
    ) * core.latent_scaling_factor.to(latents.device)
    return core.multi_modal_projector(features)[0]
