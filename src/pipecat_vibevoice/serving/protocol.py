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
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

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

#: Options passed to the engine when a client sets them (VibeVoice knobs).
ENGINE_OPTIONS = {"cfg_scale": (0.1, 10.0), "inference_steps": (1, 50), "seed": (0, 2**31 - 1)}


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
        options: dict[str, Any] = {}
        for name, (low, high) in ENGINE_OPTIONS.items():
            if data.get(name) is not None:
                value = _number(data, name, low, high, request_id)
                options[name] = int(value) if name != "cfg_scale" else value
        return Speak(
            id=request_id or new_id(),
            text=text,
            voice=voice,
            speed=_number(data, "speed", 0.5, 2.0, request_id, default=1.0),
            pitch=_number(data, "pitch", 0.5, 2.0, request_id, default=1.0),
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


def _number(
    data: dict[str, Any],
    name: str,
    low: float,
    high: float,
    request_id: str | None,
    default: float | None = None,
) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError("invalid_message", f"{name} must be a number", request_id)
    if not low <= value <= high:
        raise ProtocolError("invalid_value", f"{name}={value} is outside {low}..{high}", request_id)
    return float(value)


def event(kind: str, **fields: Any) -> str:
    """One server event as a JSON text frame (``None`` fields are left out)."""
    body = {"type": kind, **{k: v for k, v in fields.items() if v is not None}}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
