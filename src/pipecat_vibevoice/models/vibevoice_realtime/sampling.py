"""One latent of one utterance by DPM-Solver++ with classifier-free guidance.

The per-utterance sampler; :func:`.batching.sample_latents` is the same computation for
many utterances at once. Kept apart from the loop so the parity tests can check a single
sampled latent against the official golden without running generation.
"""

from __future__ import annotations

from typing import Any

import torch

from .noise import NoiseSource
from .settings import GenerationSettings


def sample_latent(
    model: Any,
    scheduler: Any,
    condition: torch.Tensor,
    settings: GenerationSettings,
    noise: NoiseSource,
) -> torch.Tensor:
    """One latent [1, vae] (float32) by DPM-Solver++ with classifier-free guidance.

    ``condition`` is [2, H]: positive, negative. The head runs on the same noisy sample
    for both rows; the guided velocity ``u + s·(c − u)`` drives the scheduler.
    """
    device = model.device
    vae = model.config.acoustic_vae_dim
    sample = noise.draw((1, vae), device)
    scheduler.set_timesteps(settings.inference_steps)
    sde = settings.algorithm.startswith("sde")
    for t in scheduler.timesteps:
        timesteps = t.to(device=device, dtype=torch.float32).expand(2)
        out = model.predict(sample.to(model.dtype).expand(2, -1), timesteps, condition)
        out = out.to(solver_dtype(out.dtype))
        guided = out[1:] + settings.cfg_scale * (out[:1] - out[1:])
        extra = {"variance_noise": noise.draw((1, vae), device)} if sde else {}
        sample = scheduler.step(guided, t, sample, **extra).prev_sample
    return sample


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the guidance and solver work in: at least float32 (bf16 models upcast)."""
    return torch.promote_types(dtype, torch.float32)


def make_scheduler(model: Any, settings: GenerationSettings) -> Any:
    """A fresh diffusers DPM-Solver++ scheduler (they are stateful: one per utterance)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**model.config.scheduler_kwargs(settings.algorithm))
