"""Speech one latent at a time, on transformers' VibeVoice-1.5B submodules.

The loop is the one ``VibeVoiceGenerationMixin._sample`` runs for a batch of one, cut at
each latent so its audio can leave at once:

1. the language model's last hidden state gives the next token, restricted (as
   ``VibeVoiceTokenConstraintProcessor`` does) to the four speech-control tokens and
   chosen by argmax;
2. an end-of-text token ends the utterance; an audio-start token resets the
   classifier-free-guidance branch to its first entry (what ``generate``'s reset amounts
   to for one sequence); an audio placeholder makes a latent:
3. the negative (unconditional) branch takes one step on the input the positive branch
   last consumed; the diffusion head denoises a latent from both conditions
   (DPM-Solver++ from the checkpoint's scheduler config, CFG), the acoustic decoder turns
   it into 3200 samples with its streaming convolution cache, and the semantic encoder
   (streaming too) hears them; the sum of the two projections is the next input.

Two things differ from ``generate`` on purpose. Noise comes from the utterance's own
generator, never torch's global one: concurrent streams share that one, so a seeded
request would not be reproducible. Drawn in ``generate``'s order and shapes, a seeded
stream still equals ``generate`` after ``torch.manual_seed`` with the same seed (the
tests check it). And ``stop`` is looked at before every model step and right after each
latent is handed over, so a stopped stream does at most the step it is in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..vibevoice_realtime.noise import TorchNoise
from .voice import draw

__all__ = ["SpeechSettings", "stream_speech"]


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class SpeechSettings:
    """The knobs of one utterance.

    ``max_latents`` bounds the model steps (each makes at most one latent), so a model
    that never says "end" still stops; ``sample_voice`` adds the σ-VAE noise to the voice
    latents as ``generate`` does by default.
    """

    cfg_scale: float = 1.3
    inference_steps: int = 10
    max_latents: int = 600
    sample_voice: bool = True


class _NegativeBranch:
    """The unconditional branch of CFG: its own KV cache over the speech inputs only."""

    def __init__(self, language_model: Any, config: Any, first_input: torch.Tensor) -> None:
        from transformers import DynamicCache

        self._lm = language_model
        self._cache = DynamicCache(config=config)
        self._first_input = first_input

    def reset(self) -> None:
        """Keep only the first entry (``generate`` masks all but a copy of it)."""
        if self._cache.get_seq_length() > 1:
            self._cache.crop(1)

    def step(self, last_input: torch.Tensor | None) -> torch.Tensor:
        """One step on the positive branch's latest input; returns the last hidden state."""
        inputs = self._first_input if last_input is None else last_input
        out = self._lm(inputs_embeds=inputs, cache=self._cache, use_cache=True)
        return out.last_hidden_state[:, -1]


def _token_mask(config: Any, device: Any) -> torch.Tensor:
    mask = torch.full((config.vocab_size,), float("-inf"), device=device)
    allowed = [config.audio_bos_token_id, config.audio_eos_token_id, config.audio_token_id]
    allowed.append(config.eos_token_id)
    mask[allowed] = 0.0
    return mask


def _end_tokens(model: Any) -> set[int]:
    ends = model.generation_config.eos_token_id
    if ends is None:
        ends = model.config.eos_token_id
    return {int(ends)} if isinstance(ends, int) else {int(e) for e in ends}


def _sample_latent(
    model: Any,
    scheduler: Any,
    positive: torch.Tensor,
    negative: torch.Tensor,
    settings: SpeechSettings,
    noise: TorchNoise,
) -> torch.Tensor:
    """One latent ``[1, 1, D]`` by guided denoising (the rows and draws of ``generate``)."""
    head = model.model.diffusion_head
    condition = torch.cat([positive, negative], dim=0)
    size = model.config.audio_config.hidden_size
    latent = draw(noise, (condition.shape[0], size), torch.float32, condition.device).to(condition)
    scheduler.set_timesteps(num_inference_steps=settings.inference_steps)
    for timestep in scheduler.timesteps:
        half = latent[:1]
        pair = torch.cat([half, half], dim=0)
        eps = head(pair, timestep.repeat(pair.shape[0]).to(pair), condition=condition)
        cond_eps, uncond_eps = eps[:1], eps[1:]
        guided = uncond_eps + settings.cfg_scale * (cond_eps - uncond_eps)
        latent = scheduler.step(torch.cat([guided, guided], dim=0), timestep, latent).prev_sample
    return latent[:1].unsqueeze(1)


@torch.inference_mode()
def stream_speech(
    model: Any,
    prompt_embeds: torch.Tensor,
    settings: SpeechSettings,
    noise: TorchNoise,
    stop: StopFlag | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each latent's audio (float, ``[hop]`` samples, on the model's device).

    ``prompt_embeds`` is ``[1, T, hidden]`` (:func:`~.prompt.prompt_embeddings`). Ends at
    the model's end token, after ``settings.max_latents`` steps, or when ``stop`` is set.
    """
    from transformers import DynamicCache

    config = model.config
    core = model.model
    language_model = core.language_model
    embed = model.get_input_embeddings()
    device = prompt_embeds.device
    mask = _token_mask(config, device)
    ends = _end_tokens(model)
    scheduler = model._build_default_noise_scheduler(model.generation_config)
    bos_embed = embed(torch.tensor([[config.audio_bos_token_id]], device=device))
    negative = _NegativeBranch(language_model, config.text_config, bos_embed)
    positive = DynamicCache(config=config.text_config)
    latent_scale = core.latent_scaling_factor.to(device)
    latent_bias = core.latent_bias_factor.to(device)
    acoustic_cache = semantic_cache = None

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    if stopped():
        return
    out = language_model(inputs_embeds=prompt_embeds, cache=positive, use_cache=True)
    hidden = out.last_hidden_state[:, -1]
    last_input: torch.Tensor | None = None  # generate's first negative step reads the bos id
    for _ in range(settings.max_latents):
        if stopped():
            return
        scores = model.lm_head(hidden).float() + mask
        token = int(torch.argmax(scores, dim=-1))
        if token in ends:
            return
        if token == config.audio_bos_token_id:
            negative.reset()
        if token == config.audio_token_id:
            negative_hidden = negative.step(last_input)
            latent = _sample_latent(model, scheduler, hidden, negative_hidden, settings, noise)
            decoded = core.audio_tower.decode(
                (latent / latent_scale - latent_bias).to(core.audio_tower.device),
                padding_cache=acoustic_cache,
                use_cache=True,
            )
            acoustic_cache = decoded.padding_cache
            yield decoded.audio[0, 0]
            if stopped():
                return
            semantic = core.semantic_tokenizer_encoder(
                decoded.audio, padding_cache=semantic_cache, use_cache=True
            )
            semantic_cache = semantic.padding_cache
            next_input = core.multi_modal_projector(latent) + core.semantic_connector(
                semantic.latents
            ).to(device)
        else:
            next_input = embed(torch.tensor([[token]], device=device))
        out = language_model(inputs_embeds=next_input, cache=positive, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        last_input = next_input
