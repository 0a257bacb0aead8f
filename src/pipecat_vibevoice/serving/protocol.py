"""The ``WS /v1/tts/stream`` protocol: client messages in, events out.

Client → server, one JSON object per text frame::

    {"type": "speak", "id": "a1", "text": "Hello.", "voice": "joe", "speed": 1.0,
     "pitch": 1.0, "final": true}
    {"type": "append", "text": " more words"}       # more text for the open utterance
    {"type": "flush"}                                # the open utterance is complete
    {"type": "end"}                                  # flush, play the queue, then close
    {"type": "cancel"}                               # drop current and queued items now

Server → client: JSON events (``ready``, ``queued``, ``started``, ``chunk``, ``done``,
``cancelled``, ``error``, ``closing``) and binary frames of PCM16 LE mono audio; each
binary frame follows the ``chunk`` event that describes it. docs/serving.md has the
full reference. Parsing is strict and every failure is a :class:`ProtocolError`
with a stable ``reason`` code, so a client can react without parsing prose.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..engine.controls import CFG_SCALE, INFERENCE_STEPS, PITCH, SEED, SPEED, Control, ControlError

MESSAGE_TYPES = ("speak", "append", "flush", "end", "cancel")


class ProtocolError(ValueError):
    """A client message was refused; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


@dataclass
class Speak:
    """Start an utterance. ``final=False`` keeps it open for ``append`` until ``flush``/``end``."""

    id: str
    text: str
    voice: str | int | None = None
    speed: float = 1.0
    pitch: float = 1.0
    final: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Append:
    """More text for the open utterance (opens one with defaults if none is open)."""

    text: str
    id: str | None = None


@dataclass
class Flush:
    """The open utterance's text is complete."""


@dataclass
class End:
    """Flush, play everything queued, then the server closes the connection."""


@dataclass
class Cancel:
    """Drop the current and queued items (or only the item ``id`` when given)."""

    id: str | None = None


ClientMessage = Speak | Append | Flush | End | Cancel

#: Engine options a client may set per utterance (checked by the engine's controls).
ENGINE_OPTIONS = (CFG_SCALE, INFERENCE_STEPS, SEED)


def new_id() -> str:
    """A short random request id for items the client did not name."""
    return uuid.uuid4().hex[:12]


def parse_message(raw: str, max_chars: int) -> ClientMessage:
    """Decode and validate one client text frame.

    Raises :class:`ProtocolError` (``invalid_json``, ``invalid_message``,
    ``unknown_type``, ``text_too_long``) with a message naming the field.
    """
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", "message must be a JSON object")
    kind = data.get("type")
    request_id = _opt_id(data)
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {kind!r}; expected one of {', '.join(MESSAGE_TYPES)}",
            request_id,
        )
    if kind == "speak":
        final = data.get("final", True)
        if not isinstance(final, bool):
            raise ProtocolError("invalid_message", "final must be true or false", request_id)
        # An open utterance may start empty: its text comes with ``append``.
        text = _text(data, max_chars, request_id, allow_empty=not final)
        voice = data.get("voice")
        if voice is not None and (isinstance(voice, bool) or not isinstance(voice, str | int)):
            raise ProtocolError("invalid_message", "voice must be a name or an index", request_id)
        options = {
            c.name: _control(data, c, request_id)
            for c in ENGINE_OPTIONS
            if data.get(c.name) is not None
        }
        return Speak(
            id=request_id or new_id(),
            text=text,
            voice=voice,
            speed=_control(data, SPEED, request_id),
            pitch=_control(data, PITCH, request_id),
            final=final,
            options=options,
        )
    if kind == "append":
        return Append(text=_text(data, max_chars, request_id, allow_empty=True), id=request_id)
    if kind == "flush":
        return Flush()
    if kind == "end":
        return End()
    return Cancel(id=request_id)


def _opt_id(data: dict[str, Any]) -> str | None:
    value = data.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProtocolError("invalid_message", "id must be a string or an integer")
    value = str(value)
    if not 0 < len(value) <= 128:
        raise ProtocolError("invalid_message", "id must be 1..128 characters")
    return value


def _text(
    data: dict[str, Any], max_chars: int, request_id: str | None, allow_empty: bool = False
) -> str:
    text = data.get("text", "" if allow_empty else None)
    if not isinstance(text, str):
        raise ProtocolError("invalid_message", "text must be a string", request_id)
    if len(text) > max_chars:
        raise ProtocolError(
            "text_too_long",
            f"text has {len(text)} characters; the limit per message is {max_chars}",
            request_id,
        )
    if not allow_empty and not text.strip():
        raise ProtocolError("empty_text", "text is empty", request_id)
    return text


def _control(data: dict[str, Any], control: Control, request_id: str | None) -> Any:
    """The checked value of a control (its default when absent).

    Not a number → ``invalid_message``; a number out of range → ``invalid_value``.
    """
    try:
        return control.check(data.get(control.name, control.default))
    except ControlError as exc:
        reason = "invalid_message" if exc.kind == "type" else "invalid_value"
        raise ProtocolError(reason, str(exc), request_id) from None


def event(kind: str, **fields: Any) -> str:
    """One server event as a JSON text frame (``None`` fields are left out)."""
    body = {"type": kind, **{k: v for k, v in fields.items() if v is not None}}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
