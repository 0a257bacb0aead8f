"""The VibeVoice TTS service for Pipecat (like Pipecat's own ``services/<provider>/`` folders)."""

from .tts import VibeVoiceTTSService, VibeVoiceTTSSettings

__all__ = ["VibeVoiceTTSService", "VibeVoiceTTSSettings"]
