"""Frames and client messages added by this pipeline.

Pipecat's VAD frames only tell confirmed speech (after ``start_secs``) and confirmed
silence (after ``stop_secs``). Fast barge-in and early transcription need the raw
signal in between, so the speech gate also emits the frames below. They are system
frames: they overtake queued audio and text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import SystemFrame

#: ``label`` of every JSON message this stack sends to clients (RTVI uses ``rtvi-ai``).
MESSAGE_LABEL = "pipecat-vibevoice"


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


def client_message(kind: str, **data: Any) -> dict[str, Any]:
    """JSON message for the client, carried in a protobuf ``message`` frame."""
    return {"label": MESSAGE_LABEL, "type": kind, "data": data}
