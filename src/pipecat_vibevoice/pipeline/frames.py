"""Frames and client messages added by this pipeline.

Pipecat's VAD frames only tell confirmed speech (after ``start_secs``) and confirmed
silence (after ``stop_secs``). Fast barge-in and early transcription need the raw
signal in between, so the speech gate also emits the frames below. They are system
frames: they overtake queued audio and text.

Messages to the client are RTVI messages, so Pipecat's official client SDKs hand them to
app code: ours are RTVI ``server-message`` s (``onServerMessage``), errors RTVI ``error``
s (``onError``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pipecat.frames.frames import SystemFrame
from pipecat.processors.frameworks.rtvi.models import Error, ErrorData, ServerMessage


@dataclass
class SpeechOnsetFrame(SystemFrame):
    """Raw VAD confidence says the user may have started to speak (not yet confirmed)."""

    timestamp: float = field(default_factory=time.time)


@dataclass
class ProbableSpeechEndFrame(SystemFrame):
    """Speech was followed by a few quiet windows: the utterance has probably ended."""

    timestamp: float = field(default_factory=time.time)


@dataclass
class SpeechResumedFrame(SystemFrame):
    """Speech came back after a :class:`ProbableSpeechEndFrame`."""

    timestamp: float = field(default_factory=time.time)


@dataclass
class ClientProtocolErrorFrame(SystemFrame):
    """The client sent something unusable; ``error`` says what, for the client."""

    error: str = ""


@dataclass
class PlaybackControlFrame(SystemFrame):
    """What the output transport does with the bot's audio it has not sent yet.

    ``hold``: stop sending now and keep it (the user may be starting to speak);
    ``release``: send it on (it was not speech); ``drop``: discard it (it was, and no
    interruption will come to do so).
    """

    action: Literal["hold", "release", "drop"] = "hold"


def client_message(kind: str, **data: Any) -> dict[str, Any]:
    """An RTVI ``server-message`` of ours: ``data.type`` says which (``playback-pause``...)."""
    return ServerMessage(data={"type": kind, **data}).model_dump()


def client_error(error: str, fatal: bool = False) -> dict[str, Any]:
    """An RTVI ``error``; ``fatal`` when the session ends with it (a refusal)."""
    return Error(data=ErrorData(error=error, fatal=fatal)).model_dump()


def message_kind(message: dict[str, Any]) -> str | None:
    """Which of our messages an RTVI message is (``data.type`` of a server-message)."""
    if message.get("type") == "server-message":
        return (message.get("data") or {}).get("type")
    return message.get("type")
