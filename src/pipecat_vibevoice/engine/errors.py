"""What the engine refuses or fails at: every error a caller may want to tell apart.

All request errors are ``ValueError`` subclasses (the request's fault: bad text, voice or
control value), so a server answers them as a client error and keeps serving; engine
faults are ``RuntimeError`` subclasses.
"""

from __future__ import annotations


class TextError(ValueError):
    """Text the engine will not speak; the message says why."""


class EmptyTextError(TextError):
    """Nothing speakable was given."""


class TextTooLongError(TextError):
    """The text exceeds the configured limit."""


class UnknownVoiceError(ValueError):
    """The requested voice does not exist; the message lists the voices that do."""


class EngineNotReadyError(RuntimeError):
    """The engine is not initialised (or was cleaned up)."""


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (missing weights, package or device); the message says which."""


class BackendLoadError(RuntimeError):
    """No backend could be loaded; ``errors`` lists every attempt."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("no TTS backend could be loaded: " + "; ".join(errors))
        self.errors = errors


class VoiceError(ValueError):
    """A voice cannot be added, stored or removed as asked; the message says why."""


class VoiceNameError(VoiceError):
    """A voice name is not allowed (characters, length) or is already taken."""


class VoiceCloningUnsupportedError(VoiceError):
    """The loaded engine cannot make voices from audio (only VibeVoice-1.5B can)."""


class VoiceClipError(VoiceError):
    """A reference clip the engine will not make a voice from."""


class ClipTooShortError(VoiceClipError):
    """The clip is shorter than the minimum a voice needs."""


class ClipTooLongError(VoiceClipError):
    """The clip is longer than the maximum the engine accepts."""


class SilentClipError(VoiceClipError):
    """The clip holds (next to) no sound."""


class SampleRateError(VoiceClipError):
    """The clip's sample rate is not a rate the engine can resample from."""
