"""Configuration of VibeVoice-Realtime, read from the official ``config.json``.

The official file (``model_type: vibevoice_streaming``) nests three configs: a Qwen2
``decoder_config`` for the whole 24-layer LM, an ``acoustic_tokenizer_config`` and a
``diffusion_head_config``. Our model reuses transformers building blocks whose configs
are named differently, so this class keeps the official dict as the source of truth and
*derives* each block's config from it. That keeps ``config.json`` files untouched and
makes every translation (split LM, reversed decoder depths, ffn size) one reviewed place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Samples per acoustic latent at 24 kHz (product of the decoder's upsampling ratios).
HOP_LENGTH = 3200
SAMPLE_RATE = 24000


def _depths(value: Any, default: str = "3-3-3-3-3-3-8") -> list[int]:
    if value is None:
        value = default
    if isinstance(value, str):
        return [int(x) for x in value.split("-")]
    return [int(x) for x in value]


@dataclass
class VibeVoiceRealtimeConfig:
    """The official config, with the derived configs of the blocks we assemble."""

    decoder_config: dict[str, Any]
    acoustic_tokenizer_config: dict[str, Any]
    diffusion_head_config: dict[str, Any]
    tts_backbone_num_hidden_layers: int
    acoustic_vae_dim: int
    extra: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str = "sdpa"

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VibeVoiceRealtimeConfig:
        """Parse the official dict; raises ``ValueError`` naming a missing section."""
        model_type = raw.get("model_type")
        if model_type not in (None, "vibevoice_streaming"):
            raise ValueError(
                f"config.json has model_type {model_type!r}; VibeVoice-Realtime needs "
                "'vibevoice_streaming' (the long-form VibeVoice 1.5B/7B models are different)"
            )
        for section in ("decoder_config", "acoustic_tokenizer_config", "diffusion_head_config"):
            if not isinstance(raw.get(section), dict):
                raise ValueError(f"config.json lacks the '{section}' section")
        if "tts_backbone_num_hidden_layers" not in raw:
            raise ValueError("config.json lacks 'tts_backbone_num_hidden_layers'")
        known = {
            "decoder_config",
            "acoustic_tokenizer_config",
            "diffusion_head_config",
            "tts_backbone_num_hidden_layers",
            "acoustic_vae_dim",
        }
        return cls(
            decoder_config=dict(raw["decoder_config"]),
            acoustic_tokenizer_config=dict(raw["acoustic_tokenizer_config"]),
            diffusion_head_config=dict(raw["diffusion_head_config"]),
            tts_backbone_num_hidden_layers=int(raw["tts_backbone_num_hidden_layers"]),
            acoustic_vae_dim=int(
                raw.get("acoustic_vae_dim", raw["acoustic_tokenizer_config"].get("vae_dim", 64))
            ),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> VibeVoiceRealtimeConfig:
        """Read ``config.json`` from a checkpoint directory."""
        path = Path(model_dir) / "config.json"
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    # -- sizes ---------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """Width of both LMs, the connector output and the diffusion condition."""
        return int(self.decoder_config["hidden_size"])

    @property
    def num_lower_layers(self) -> int:
        """Layers of the text-only lower LM (total minus the TTS layers)."""
        return int(self.decoder_config["num_hidden_layers"]) - self.tts_backbone_num_hidden_layers

    @property
    def max_positions(self) -> int:
        """Longest upper-LM sequence (the official generation limit)."""
        return int(self.decoder_config.get("max_position_embeddings", 8192))

    @property
    def num_train_timesteps(self) -> int:
        """Diffusion training steps (the scheduler's timestep range)."""
        return int(self.diffusion_head_config.get("ddpm_num_steps", 1000))

    @property
    def prediction_type(self) -> str:
        """What the diffusion head predicts (``v_prediction`` for this model)."""
        return str(self.diffusion_head_config.get("prediction_type", "v_prediction"))

    # -- derived block configs ------------------------------------------------------------

    def _qwen2(self, layers: int):
        from transformers import Qwen2Config

        keys = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "hidden_act",
            "max_position_embeddings",
            "rms_norm_eps",
            "rope_theta",
            "attention_dropout",
        )
        kwargs = {k: self.decoder_config[k] for k in keys if k in self.decoder_config}
        if self.decoder_config.get("head_dim"):
            kwargs["head_dim"] = self.decoder_config["head_dim"]
        cfg = Qwen2Config(
            **kwargs,
            num_hidden_layers=layers,
            max_window_layers=layers,
            use_sliding_window=False,
            sliding_window=None,
            tie_word_embeddings=False,
            use_cache=True,
        )
        cfg._attn_implementation = self.attn_implementation
        return cfg

    def lower_lm_config(self):
        """Qwen2 config of the lower (text) LM."""
        return self._qwen2(self.num_lower_layers)

    def upper_lm_config(self):
        """Qwen2 config of the upper (TTS) LM."""
        return self._qwen2(self.tts_backbone_num_hidden_layers)

    def acoustic_decoder_config(self):
        """The σ-VAE decoder config of transformers.

        transformers names the ratios by the *encoder's* direction and reverses them for
        the decoder, and ``.decoder_config`` reverses the depths: we go through the full
        tokenizer config so both reversals happen in the library, not by hand.
        """
        from transformers import VibeVoiceAcousticTokenizerConfig

        at = self.acoustic_tokenizer_config
        ratios = at.get("encoder_ratios") or at.get("decoder_ratios") or [8, 5, 5, 4, 2, 2]
        depths = _depths(at.get("encoder_depths"))
        if at.get("decoder_depths"):  # explicit decoder depths: undo the library's reversal
            depths = list(reversed(_depths(at["decoder_depths"])))
        full = VibeVoiceAcousticTokenizerConfig(
            channels=int(at.get("channels", 1)),
            hidden_size=int(at.get("vae_dim", self.acoustic_vae_dim)),
            kernel_size=7,
            rms_norm_eps=float(at.get("layernorm_eps", 1e-5)),
            num_filters=int(at.get("decoder_n_filters", at.get("encoder_n_filters", 32))),
            downsampling_ratios=list(reversed(ratios)),
            depths=depths,
            hidden_act="gelu",
            ffn_expansion=4,
        )
        return full.decoder_config

    def diffusion_head_block_config(self):
        """The diffusion-head config of transformers."""
        from transformers.models.vibevoice.configuration_vibevoice import (
            VibeVoiceDiffusionHeadConfig,
        )

        d = self.diffusion_head_config
        hidden = int(d.get("hidden_size", self.hidden_size))
        return VibeVoiceDiffusionHeadConfig(
            hidden_size=hidden,
            latent_size=int(d.get("latent_size", self.acoustic_vae_dim)),
            num_hidden_layers=int(d.get("head_layers", 4)),
            intermediate_size=int(hidden * float(d.get("head_ffn_ratio", 3.0))),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            hidden_act="silu",
        )

    def scheduler_kwargs(self, algorithm: str = "sde-dpmsolver++") -> dict[str, Any]:
        """Settings of diffusers' ``DPMSolverMultistepScheduler`` matching the official sampler.

        The official "cosine" schedule is diffusers' ``squaredcos_cap_v2`` (diffusers has
        no "cosine" alias). ``algorithm`` is ``sde-dpmsolver++`` (the official streaming
        web demo) or ``dpmsolver++`` (the official file demo).
        """
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": self.prediction_type,
            "algorithm_type": algorithm,
            "solver_order": 2,
            "solver_type": "midpoint",
            "lower_order_final": True,
            "euler_at_final": False,
            "final_sigmas_type": "zero",
            "timestep_spacing": "linspace",
        }
