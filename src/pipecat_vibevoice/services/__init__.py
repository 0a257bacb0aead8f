"""Pipecat services over the pipecat-vibevoice engine (no transport knowledge here)."""

from .vibevoice.tts import VibeVoiceTTSService, VibeVoiceTTSSettings

__all__ = ["VibeVoiceTTSService", "VibeVoiceTTSSettings"]
