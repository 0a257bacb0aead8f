"""A Pipecat TTS service for a remote pipecat-vibevoice TTS server (``WS /v1/tts/stream``)."""

from .tts import RemoteTTSService, RemoteTTSSettings, RemoteTTSUnavailable, probe_remote_tts

__all__ = ["RemoteTTSService", "RemoteTTSSettings", "RemoteTTSUnavailable", "probe_remote_tts"]
