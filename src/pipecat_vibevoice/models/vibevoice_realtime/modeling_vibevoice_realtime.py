"""VibeVoice-Realtime assembled from transformers blocks, plus the glue the realtime model adds.

Reused from transformers 5.x: ``Qwen2Model`` (both LM halves),
``VibeVoiceAcousticTokenizerDecoderModel`` (σ-VAE decoder with its streaming padding
cache), ``VibeVoiceDiffusionHead`` and ``VibeVoiceMultiModalProjector`` (the connector).
Ours: the split of one Qwen2 stack into a text-only lower LM without final norm and an
upper TTS LM, the learned input-type embedding, the EOS classifier and the wiring of
each step.

Only the modules live here: parameter names differ from the official checkpoint, and
:mod:`.checkpoint` maps and loads them (``checkpoint.load_model`` / ``from_pretrained``).
This module imports nothing of the package but the configuration, so checkpoint loading
sits above it and nothing imports back.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_vibevoice_realtime import VibeVoiceRealtimeConfig

#: Rows of ``tts_input_types``: what kind of input a position of the upper LM carries.
SPEECH_TYPE = 0
TEXT_TYPE = 1


class VibeVoiceRealtimeEOSHead(nn.Module):
    """Linear → ReLU → Linear on the upper LM's hidden state; logit > 0 means "done"."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class VibeVoiceRealtimeModel(nn.Module):
    """All inference parts of VibeVoice-Realtime; stateless (caches live with the caller).

    Stateless on purpose: several utterances may run concurrently on one loaded model,
    each with its own KV caches, decoder padding cache and scheduler.
    """

    def __init__(self, config: VibeVoiceRealtimeConfig) -> None:
        super().__init__()
        from transformers import Qwen2Model, VibeVoiceAcousticTokenizerDecoderModel
        from transformers.models.vibevoice.modeling_vibevoice import (
            VibeVoiceDiffusionHead,
            VibeVoiceMultiModalProjector,
        )

        self.config = config
        hidden = config.hidden_size
        self.language_model = Qwen2Model(config.lower_lm_config())
        # The official lower LM has no final norm (not even a ones-weight RMSNorm, which
        # would still normalise): its output feeds the upper LM as is.
        self.language_model.norm = nn.Identity()
        self.tts_language_model = Qwen2Model(config.upper_lm_config())
        self.tts_input_types = nn.Embedding(2, hidden)
        self.acoustic_connector = VibeVoiceMultiModalProjector(config.acoustic_vae_dim, hidden)
        self.prediction_head = VibeVoiceDiffusionHead(config.diffusion_head_block_config())
        self.acoustic_decoder = VibeVoiceAcousticTokenizerDecoderModel(
            config.acoustic_decoder_config()
        )
        self.tts_eos_classifier = VibeVoiceRealtimeEOSHead(hidden)
        self.register_buffer("speech_scaling_factor", torch.tensor(1.0))
        self.register_buffer("speech_bias_factor", torch.tensor(0.0))

    # -- properties ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.tts_input_types.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the weights."""
        return self.tts_input_types.weight.dtype

    def rebuild_runtime_buffers(self) -> None:
        """Recompute non-persistent buffers (RoPE and timestep frequencies).

        They are not in the checkpoint; after building on the ``meta`` device and loading
        with ``assign=True`` they would be left empty, so they are made again here, in
        float32 on the weights' device, exactly as the constructors compute them.
        """
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
        from transformers.models.vibevoice.modeling_vibevoice import (
            VibeVoiceDiffusionHeadSinusoidalEmbedding,
        )

        device = self.device
        for lm in (self.language_model, self.tts_language_model):
            lm.rotary_emb = Qwen2RotaryEmbedding(config=lm.config).to(device)
        embedding = self.prediction_head.timestep_embedding
        fresh = VibeVoiceDiffusionHeadSinusoidalEmbedding(embedding.config)
        self.prediction_head.timestep_embedding = fresh.to(device)

    # -- the steps of generation ---------------------------------------------------------------

    def forward_text(self, input_ids: torch.Tensor, lm_cache, tts_cache) -> torch.Tensor:
        """One text window: lower LM on the ids, then the upper LM on its hidden states.

        Token embeddings of the upper LM are never read: its input at a text position is
        the lower LM's output plus the "text" type embedding. Returns the upper LM's
        hidden states [B, n, H]; both caches advance by n.
        """
        lower = self.language_model(input_ids=input_ids, cache=lm_cache, use_cache=True)
        embeds = lower.last_hidden_state + self.tts_input_types.weight[TEXT_TYPE]
        upper = self.tts_language_model(inputs_embeds=embeds, cache=tts_cache, use_cache=True)
        return upper.last_hidden_state

    def forward_speech(self, speech_embeds: torch.Tensor, tts_cache) -> torch.Tensor:
        """One speech position of the upper LM: connector output plus the "speech" type."""
        embeds = speech_embeds + self.tts_input_types.weight[SPEECH_TYPE]
        out = self.tts_language_model(inputs_embeds=embeds, cache=tts_cache, use_cache=True)
        return out.last_hidden_state

    def connect(self, latents: torch.Tensor) -> torch.Tensor:
        """Connector: model-space latents [B, T, vae_dim] → LM embeddings [B, T, H]."""
        return self.acoustic_connector(latents)

    def predict(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """Diffusion head: v-prediction for ``noisy`` [B, vae_dim] at ``timesteps`` [B]."""
        return self.prediction_head(noisy, timesteps.to(self.dtype), condition)

    def eos_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """EOS logit of the last position of ``hidden`` [B, T, H] → [B]."""
        return self.tts_eos_classifier(hidden[:, -1, :]).squeeze(-1)

    def decode(self, latents: torch.Tensor, padding_cache=None) -> torch.Tensor:
        """Model-space latents [B, T, vae_dim] → audio [B, T·3200].

        Applies the checkpoint's scaling (``z / scale − bias``); with a padding cache the
        decoder is causal-streaming and successive calls join without seams.
        """
        scaled = latents / self.speech_scaling_factor - self.speech_bias_factor
        out = self.acoustic_decoder(
            scaled.transpose(1, 2).to(self.dtype),
            padding_cache=padding_cache,
            use_cache=padding_cache is not None,
        )
        return out.audio[:, 0, :]
