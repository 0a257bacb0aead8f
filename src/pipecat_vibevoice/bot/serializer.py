"""Pipecat's protobuf serializer, hardened against bad client input.

The stock serializer raises on bytes that are not a protobuf ``Frame``, and the
FastAPI input transport ends the session on any exception while receiving. Here a
bad message becomes a :class:`ClientProtocolErrorFrame` instead: the session goes
on and the speech gate tells the client what was wrong (rate-limited, so a client
spraying garbage does not get a reply per message).
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    TextFrame,
)
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from ..pipeline.frames import ClientProtocolErrorFrame

#: Errors reported to the client per connection before going quiet (all are logged).
MAX_REPORTED_ERRORS = 5


class SafeProtobufSerializer(ProtobufFrameSerializer):
    """Deserialize audio, transport messages and interruptions; reject the rest politely."""

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """Frame for ``data``, or a :class:`ClientProtocolErrorFrame` saying why not."""
        if isinstance(data, str):
            return self._error("text messages are not supported: send binary protobuf frames")
        try:
            frame = await super().deserialize(data)
        except Exception as exc:
            return self._error(f"malformed protobuf frame ({len(data)} bytes): {exc}")
        if frame is None:
            return self._error("empty or unknown protobuf frame")
        if isinstance(frame, InputAudioRawFrame):
            if len(frame.audio) % 2:
                return self._error("audio payload must be 16-bit PCM (even byte count)")
            return frame
        if isinstance(frame, InterruptionFrame):
            return frame
        if isinstance(frame, TextFrame):  # text and transcription frames
            return self._error(f"{type(frame).__name__} from clients is not supported")
        return frame

    def _error(self, message: str) -> Frame | None:
        self.errors += 1
        if self.errors <= MAX_REPORTED_ERRORS:
            logger.warning(f"bad client message: {message}")
            return ClientProtocolErrorFrame(error=message)
        if self.errors % 100 == 0:
            logger.warning(f"{self.errors} bad client messages so far; latest: {message}")
        return None
