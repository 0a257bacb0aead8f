"""Pipecat services over the pipecat-vibevoice engine (no transport knowledge here)."""

from .remote.tts import RemoteTTSService
from .vibevoice.tts import VibeVoiceTTSService, VibeVoiceTTSSettings

__all__ = ["RemoteTTSService", "VibeVoiceTTSService", "VibeVoiceTTSSettings"]
