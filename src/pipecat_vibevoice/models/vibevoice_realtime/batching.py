"""Model steps for many VibeVoice utterances at once (cross-utterance batching).

Each utterance keeps its own KV caches, and at any moment they hold different numbers of
positions (different voices, texts, start times). A plain batched ``Qwen2Model`` call
would need padding and masks; instead :func:`ragged_lm_step` runs the weight-bound work
(norms, projections, MLP) on all N rows together, which is where a GPU step spends its
time at small batch, and only the attention per sequence, against its own cache. One
query token attends to every key of its cache, so no mask is needed.

The results equal the per-utterance model steps of :class:`.utterance.Utterance` up to
float rounding of the batched matrix products (the tests prove it): :func:`sample_latents`
equals :func:`.sampling.sample_latent` row by row, :func:`decode_each` equals
``Utterance.speak``'s decode, :func:`listen_batch` equals ``Utterance.listen`` per
utterance. The loop rules stay with each ``Utterance``; only the model calls are batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .modeling_vibevoice_realtime import SPEECH_TYPE
from .noise import NoiseSource
from .sampling import solver_dtype


def cache_lengths(caches: Sequence[Any]) -> list[int]:
    """Positions held by each cache (its next position id)."""
    return [int(cache.get_seq_length()) for cache in caches]


def _attend(
    attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, caches: Sequence[Any]
) -> torch.Tensor:
    """Per-sequence attention of one query token against its own, updated cache.

    ``query`` [N, heads, 1, d], ``key``/``value`` [N, kv_heads, 1, d] (after RoPE).
    Each row's k/v are appended to its cache first, exactly as ``cache.update`` does
    inside ``Qwen2Attention``. Returns [N, 1, heads·d].
    """
    outputs = []
    gqa = attn.num_key_value_groups > 1
    for row, cache in enumerate(caches):
        keys, values = cache.update(key[row : row + 1], value[row : row + 1], attn.layer_idx)
        outputs.append(
            F.scaled_dot_product_attention(
                query[row : row + 1], keys, values, scale=attn.scaling, enable_gqa=gqa
            )
        )
    out = torch.cat(outputs, dim=0)  # [N, heads, 1, d]
    return out.transpose(1, 2).reshape(out.shape[0], 1, -1)


def ragged_lm_step(lm: Any, embeds: torch.Tensor, caches: Sequence[Any]) -> torch.Tensor:
    """One single-token step of a transformers ``Qwen2Model`` for N ragged sequences.

    ``embeds`` [N, 1, H] are the input embeddings; ``caches[i]`` is sequence i's
    ``DynamicCache`` (any length). Every cache grows by one position, as with
    ``lm(inputs_embeds=embeds[i:i+1], cache=caches[i], use_cache=True)``, and the final
    hidden states [N, 1, H] are returned. Uses the module's own weights, rotary embedding
    and norms; only the loop over layers is ours (so the attention can be ragged).
    """
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    if embeds.dim() != 3 or embeds.shape[1] != 1 or embeds.shape[0] != len(caches):
        raise ValueError(
            f"ragged_lm_step takes [N, 1, H] embeds for N caches, got {tuple(embeds.shape)} "
            f"for {len(caches)} caches"
        )
    rows = embeds.shape[0]
    positions = torch.tensor(cache_lengths(caches), device=embeds.device)[:, None]  # [N, 1]
    cos, sin = lm.rotary_emb(embeds, positions)
    hidden = embeds
    for layer in lm.layers[: lm.config.num_hidden_layers]:
        attn = layer.self_attn
        shape = (rows, 1, -1, attn.head_dim)
        normed = layer.input_layernorm(hidden)
        query = attn.q_proj(normed).view(shape).transpose(1, 2)
        key = attn.k_proj(normed).view(shape).transpose(1, 2)
        value = attn.v_proj(normed).view(shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        hidden = hidden + attn.o_proj(_attend(attn, query, key, value, caches))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return lm.norm(hidden)


def sample_latents(
    model: Any,
    scheduler: Any,
    positive: torch.Tensor,
    negative: torch.Tensor,
    cfg_scales: Sequence[float],
    inference_steps: int,
    algorithm: str,
    noises: Sequence[NoiseSource],
) -> torch.Tensor:
    """N latents [N, vae] (float32): :func:`.sampling.sample_latent` for N rows at once.

    ``positive``/``negative`` are [N, H] conditions; the head runs once per step on
    [2N] rows (the positive half, then the negative half) and each row gets its own cfg
    scale. Every utterance draws from its own :class:`NoiseSource` in the single path's
    order (initial sample, then one variance draw per SDE step), so its latent does not
    depend on who shares the batch. One scheduler serves the group: ``set_timesteps``
    resets its multistep history, and its update is elementwise per row.
    """
    device = model.device
    vae = model.config.acoustic_vae_dim
    rows = len(noises)
    sample = torch.cat([noise.draw((1, vae), device) for noise in noises], dim=0)
    scales = torch.tensor(list(cfg_scales), dtype=torch.float32, device=device)[:, None]
    condition = torch.cat([positive, negative], dim=0)
    scheduler.set_timesteps(inference_steps)
    sde = algorithm.startswith("sde")
    for t in scheduler.timesteps:
        timesteps = t.to(device=device, dtype=torch.float32).expand(2 * rows)
        doubled = sample.to(model.dtype).repeat(2, 1)
        out = model.predict(doubled, timesteps, condition)
        out = out.to(solver_dtype(out.dtype))
        cond, uncond = out[:rows], out[rows:]
        guided = uncond + scales * (cond - uncond)
        extra = {}
        if sde:
            draws = [noise.draw((1, vae), device) for noise in noises]
            extra["variance_noise"] = torch.cat(draws, dim=0)
        sample = scheduler.step(guided, t, sample, **extra).prev_sample
    return sample


def decode_each(
    model: Any, latents: torch.Tensor, decoder_caches: Sequence[Any]
) -> list[np.ndarray]:
    """Decode latent i with utterance i's streaming padding cache, one call per utterance.

    Not batched: transformers' padding cache fixes its batch size on first use and each
    utterance's cache holds its own left context, so batching would mean stacking and
    splitting every layer's cache per step. The decoder is small next to the LM and
    the diffusion head, so this is left per utterance.
    """
    audio = []
    for row, cache in enumerate(decoder_caches):
        chunk = model.decode(latents[row : row + 1, None, :], cache)
        audio.append(chunk[0].float().cpu().numpy())
    return audio


def listen_batch(
    model: Any,
    latents: torch.Tensor,
    positive_caches: Sequence[Any],
    negative_caches: Sequence[Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feed N latents [N, vae] back into their positive and negative upper-LM streams.

    Connector on [N, 1, vae], then one ragged step over the 2N caches (positive ones
    first). Returns (positive [N, H], negative [N, H], EOS logits [N] float32) — per row
    what ``Utterance.listen`` computes.
    """
    rows = latents.shape[0]
    embeds = model.connect(latents[:, None, :].to(model.dtype))
    embeds = embeds + model.tts_input_types.weight[SPEECH_TYPE]
    caches = [*positive_caches, *negative_caches]
    hidden = ragged_lm_step(model.tts_language_model, embeds.repeat(2, 1, 1), caches)
    positive, negative = hidden[:rows, -1, :], hidden[rows:, -1, :]
    eos = model.eos_logit(positive[:, None, :]).float()
    return positive, negative, eos
