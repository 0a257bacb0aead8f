"""Phone calls through Twilio Media Streams: the same voice pipeline as ``/ws``.

* ``POST /telephony/twilio`` — the call's webhook: TwiML that connects the call to the
  socket below (``<Connect><Stream url="wss://HOST/telephony/twilio"/></Connect>``).
* ``WS /telephony/twilio`` — one call = one pipeline. Twilio speaks JSON text frames:
  ``connected``, ``start`` (streamSid, callSid), then ``media`` (20 ms of 8 kHz μ-law,
  base64) until ``stop``. Pipecat's :class:`TwilioFrameSerializer` turns them into
  16 kHz PCM for the pipeline and the bot's 24 kHz voice back into 8 kHz μ-law, and sends
  ``clear`` (Twilio drops what it has buffered) on every interruption.

Everything else is the web session's (:mod:`.session`): the access policy and the
``max_sessions`` limit, the registry behind ``/health``, the paced output that holds
the bot's audio at the first voiced frames of a barge-in (a phone cannot be told to
pause, so not sending is the only early pause it gets), cancellation on hang-up.

What a phone line adds, and why it is handled here:

* The stream is identified only by its first messages, so they are read before the
  serializer is built (as Pipecat's runner does, ``parse_telephony_websocket``).
* A carrier's stray message must not drop a call: :class:`SafeTwilioSerializer` logs
  and ignores bad JSON, unknown events and bad base64 (the stock serializer raises on
  the last, and the transport ends the session on any exception while receiving).
* ``stop`` means the caller hung up: the pipeline is cancelled at once, not when the
  socket finally closes.
* Hanging up through Twilio's REST API (``auto_hang_up``) needs credentials; it is on
  only when they are configured, and never for a call the carrier already ended.
* The line's rate conversions (8 → 16 kHz in, 24 → 8 kHz out) go through
  :class:`LineResampler`, short FIR filters with ~3 ms of delay, instead of Pipecat's
  default stream resampler, which holds ~0.1 s each way and lets it out in bursts
  (see the class for the figures and what they cost a call).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.serializers.twilio import TwilioFrameSerializer
from starlette.websockets import WebSocketDisconnect

from ..pipeline.models import SharedModels
from ..web_access import AccessPolicy
from .session import (
    SessionRegistry,
    admit,
    client_name,
    make_transport,
    run_pipeline,
    tracked_session,
)
from .settings import ServerSettings, TwilioResampler

#: Path of the webhook and of the media socket.
TWILIO_PATH = "/telephony/twilio"
#: How long a call may take to send its ``start`` message after the socket opened.
START_TIMEOUT_S = 10.0
#: Messages tolerated before ``start`` (Twilio sends one: ``connected``).
MAX_MESSAGES_BEFORE_START = 8
#: Carrier events the bot knows; the rest are logged and ignored.
KNOWN_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})
#: Events the bot may send to Twilio; any other message would be an error there.
OUTBOUND_EVENTS = frozenset({"media", "mark", "clear"})
#: Bad carrier messages logged one by one before the log goes quiet (then every 100th).
MAX_LOGGED_ERRORS = 5
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: A host[:port] safe to put in TwiML (anything else is refused, not escaped into XML).
_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


# -- the start of a call --------------------------------------------------------------------


@dataclass(frozen=True)
class CallStart:
    """What Twilio's ``start`` message says about the call."""

    stream_sid: str
    call_sid: str = ""
    account_sid: str = ""
    custom_parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> CallStart | None:
        """The call of a ``start`` message, or None when it names no stream."""
        start = message.get("start")
        start = start if isinstance(start, dict) else {}
        stream_sid = start.get("streamSid") or message.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            return None
        params = start.get("customParameters")

        def text(value: Any) -> str:
            return value if isinstance(value, str) else ""

        return cls(
            stream_sid,
            text(start.get("callSid")),
            text(start.get("accountSid")),
            params if isinstance(params, dict) else {},
        )


def parse_message(data: str | bytes) -> dict[str, Any] | None:
    """One carrier message as a JSON object, or None (with the reason logged by the caller)."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        return None
    return message if isinstance(message, dict) else None


async def read_call_start(
    websocket: WebSocket, timeout: float = START_TIMEOUT_S
) -> CallStart | None:
    """Read up to Twilio's ``start`` message; None if the call ends or never starts.

    ``connected`` comes first and says nothing we need; malformed messages before
    ``start`` are logged and skipped, but only a few, and only for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    for _ in range(MAX_MESSAGES_BEFORE_START):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            raw = await asyncio.wait_for(websocket.receive(), remaining)
        except TimeoutError:
            break
        except (WebSocketDisconnect, RuntimeError):
            return None
        if raw.get("type") == "websocket.disconnect":
            return None
        data = raw.get("text") if raw.get("text") is not None else raw.get("bytes")
        message = parse_message(data or "")
        if message is None:
            logger.warning(f"ignored a malformed message before 'start': {str(data)[:80]!r}")
            continue
        event = message.get("event")
        if event == "start":
            start = CallStart.from_message(message)
            if start is None:
                logger.warning("ignored a 'start' message without a streamSid")
                continue
            return start
        if event == "stop":
            return None
        if event != "connected":
            logger.warning(f"ignored {event!r} before 'start'")
    logger.warning("no 'start' message from the carrier in time")
    return None


# -- the line's rate conversions ------------------------------------------------------------


class LineResampler(BaseAudioResampler):
    """Streaming resampler for a phone line: a short FIR filter, output on every call.

    Pipecat's serializers default to a soxr VHQ stream resampler. On 20 ms pieces it
    holds about 0.1 s and lets it out in bursts: 8 → 16 kHz gives nothing for four
    media messages, then 1516 samples (95 ms); 24 → 8 kHz gives 1100 samples (137 ms)
    every third or fourth 40 ms chunk; and after 0.2 s without audio it clears that
    state, so the tail it held — the last ~0.1 s of every bot answer — is never sent.
    On a call that is ~0.1 s later to hear the caller start and stop (barge-in and
    voice-to-voice), ~0.1 s later to the bot's first sound, and bursts of 137 ms in
    Twilio's buffer, which the caller still hears after the server stops sending.

    Here: zero-stuff by ``L``, one Kaiser-windowed low-pass (flat to 0.85 of the lower
    rate's Nyquist frequency and 60 dB down at it: 3.4 and 4 kHz on an 8 kHz line), keep
    every ``M``-th sample, with the filter's history carried from call to call. Every
    call returns its share of samples at once, ~3 ms late. Ratios with ``L`` or ``M``
    over :attr:`MAX_FACTOR` fall back to Pipecat's resampler.
    """

    #: Largest up/down factor served here (8 ↔ 16/24/48 kHz need 2, 3 and 6).
    MAX_FACTOR = 8
    #: Stopband attenuation of the low-pass, dB.
    ATTENUATION_DB = 60.0

    def __init__(self) -> None:
        self._rates: tuple[int, int] | None = None
        self._up = self._down = 1
        self._taps = np.ones(1)
        self._history = np.zeros(0)
        self._phase = 0
        self._fallback: BaseAudioResampler | None = None

    def _design(self, in_rate: int, out_rate: int) -> None:
        """The filter for one pair of rates (once per stream)."""
        self._rates = (in_rate, out_rate)
        g = math.gcd(in_rate, out_rate)
        self._up, self._down = out_rate // g, in_rate // g
        if max(self._up, self._down) > self.MAX_FACTOR:
            self._fallback = create_stream_resampler()
            return
        rate = in_rate * self._up  # the filter runs at the zero-stuffed rate
        nyquist = min(in_rate, out_rate) / 2
        passband, stopband = 0.85 * nyquist, nyquist
        width = 2 * math.pi * (stopband - passband) / rate
        count = math.ceil((self.ATTENUATION_DB - 8) / (2.285 * width)) | 1
        beta = 0.1102 * (self.ATTENUATION_DB - 8.7)
        n = np.arange(count) - (count - 1) / 2
        cutoff = (passband + stopband) / 2 / rate
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(count, beta)
        self._taps = taps / taps.sum() * self._up  # unit gain after zero-stuffing
        self._history = np.zeros(count - 1)
        self._phase = 0

    @property
    def delay_s(self) -> float:
        """How late the output is (the filter's group delay)."""
        if self._rates is None or self._fallback is not None:
            return 0.0
        return (len(self._taps) - 1) / 2 / (self._rates[0] * self._up)

    async def resample(self, audio: bytes, in_rate: int, out_rate: int) -> bytes:
        """Resample one piece of a continuous stream (int16 mono bytes)."""
        if in_rate == out_rate:
            return audio
        if self._rates != (in_rate, out_rate):
            self._fallback = None
            self._design(in_rate, out_rate)
        if self._fallback is not None:
            return await self._fallback.resample(audio, in_rate, out_rate)
        samples = np.frombuffer(audio, dtype="<i2")
        stuffed = np.zeros(len(samples) * self._up)
        stuffed[:: self._up] = samples
        window = np.concatenate([self._history, stuffed])
        filtered = np.convolve(window, self._taps, mode="valid")
        out = filtered[self._phase :: self._down]
        self._phase = (self._phase - len(filtered)) % self._down
        self._history = window[len(window) - len(self._history) :]
        return np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes()

    async def flush(self) -> bytes:
        """The audio still in the filter (end of a stream), then a clean start."""
        if self._rates is None:
            return b""
        if self._fallback is not None:
            return await self._fallback.flush()
        pad = math.ceil(len(self._history) / 2 / self._up)
        tail = await self.resample(bytes(2 * pad), *self._rates)
        await self.reset()
        return tail

    async def reset(self) -> None:
        """Forget the stream so far (after an interruption: no stale tail)."""
        if self._fallback is not None:
            await self._fallback.reset()
        self._history = np.zeros(len(self._history))
        self._phase = 0


# -- the serializer -------------------------------------------------------------------------


class SafeTwilioSerializer(TwilioFrameSerializer):
    """Pipecat's Twilio serializer that never lets a bad carrier message end the call.

    Also tells the session when the carrier sends ``stop``, sends Twilio only messages
    of its own protocol, and skips the REST hang-up for a call the carrier ended.
    """

    def __init__(
        self,
        start: CallStart,
        *,
        account_sid: str = "",
        auth_token: str = "",
        on_stop: Callable[[], None] | None = None,
        resampler: TwilioResampler = "line",
    ) -> None:
        """Build the serializer of one call.

        Args:
            start: The call, from its ``start`` message.
            account_sid: Twilio account for the REST hang-up (default: the call's own).
            auth_token: Its auth token; empty = no REST hang-up at all.
            on_stop: Called once when the carrier sends ``stop`` (the caller hung up).
            resampler: ``line`` (:class:`LineResampler`) or ``soxr`` (Pipecat's own).

        """
        account_sid = account_sid or start.account_sid
        self.auto_hang_up = bool(auth_token and account_sid and start.call_sid)
        super().__init__(
            start.stream_sid,
            call_sid=start.call_sid or None,
            account_sid=account_sid or None,
            auth_token=auth_token or None,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=self.auto_hang_up),
        )
        if resampler == "line":
            # Pipecat 1.14 keeps the two resamplers in these attributes and creates them
            # itself; a test checks that they are still the ones used.
            self._input_resampler = LineResampler()
            self._output_resampler = LineResampler()
        self.stream_sid = start.stream_sid
        self.errors = 0
        self.ended_by_carrier = False
        self._on_stop = on_stop

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """Twilio's message for ``frame``; nothing that is not Twilio's own protocol."""
        if isinstance(frame, (EndFrame, CancelFrame)) and self.ended_by_carrier:
            return None  # the call is over already: no REST hang-up
        if isinstance(frame, InterruptionFrame):
            await self._output_resampler.reset()  # the interrupted answer's tail is stale
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            message = frame.message
            if not isinstance(message, dict) or message.get("event") not in OUTBOUND_EVENTS:
                return None  # our page's messages mean nothing to a phone
        return await super().serialize(frame)

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """The frame of a carrier message, or None for anything else (bad ones logged)."""
        message = parse_message(data)
        if message is None:
            return self._error(f"not a JSON object: {str(data)[:80]!r}")
        event = message.get("event")
        if event not in KNOWN_EVENTS:
            return self._error(f"unknown event {str(event)[:40]!r}")
        if event == "stop":
            self._stopped()
            return None
        if event not in ("media", "dtmf"):
            return None  # connected, start (again), mark: nothing to do
        if message.get("streamSid", self.stream_sid) != self.stream_sid:
            return self._error(f"{event} for another stream {str(message.get('streamSid'))[:40]!r}")
        if event == "media" and not self._media_ok(message):
            return None
        try:
            return await super().deserialize(data)
        except Exception as exc:  # e.g. a dtmf whose body is not an object
            return self._error(f"unusable {event} message: {exc!r}")

    def _media_ok(self, message: dict[str, Any]) -> bool:
        """Whether a ``media`` message carries inbound audio the stock code can decode."""
        media = message.get("media")
        if not isinstance(media, dict):
            self._error("media without a media object")
            return False
        if media.get("track", "inbound") != "inbound":
            return False  # the caller's audio only
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            self._error("media without a payload")
            return False
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._error(f"media payload is not base64 ({len(payload)} chars)")
            return False
        return True

    def _stopped(self) -> None:
        if self.ended_by_carrier:
            return
        self.ended_by_carrier = True
        logger.info("the carrier sent 'stop': the caller hung up")
        if self._on_stop is not None:
            self._on_stop()

    def _error(self, message: str) -> None:
        """Log a bad carrier message (the first few, then every 100th) and ignore it."""
        self.errors += 1
        if self.errors <= MAX_LOGGED_ERRORS:
            logger.warning(f"ignored a bad carrier message: {message}")
        elif self.errors % 100 == 0:
            logger.warning(f"{self.errors} bad carrier messages so far; latest: {message}")
        return None


# -- one call -------------------------------------------------------------------------------


async def run_call(
    websocket: WebSocket,
    settings: ServerSettings,
    models: SharedModels | None,
    registry: SessionRegistry,
    tts_factory: Any = None,
    access: AccessPolicy | None = None,
) -> None:
    """Accept a Twilio media stream, run the voice pipeline until the call ends, clean up."""
    access = access or AccessPolicy.from_settings(settings.allowed_origins, settings.serving.token)
    if not await admit(websocket, settings, registry, access):
        return
    with tracked_session(registry, f"twilio {client_name(websocket)}") as info:
        await websocket.accept()
        start = await read_call_start(websocket)
        if start is None:
            await _close(websocket, 1008, "expected Twilio's 'start' message")
            return
        info.client = f"twilio call {start.call_sid or '?'} ({client_name(websocket)})"
        stop_tasks: list[asyncio.Task] = []

        def on_stop() -> None:
            # A task, not an await: the receive loop that saw ``stop`` is cancelled too.
            if info.worker is not None and not stop_tasks:
                stop_tasks.append(
                    asyncio.create_task(info.worker.cancel(reason="the caller hung up"))
                )

        serializer = SafeTwilioSerializer(
            start,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            on_stop=on_stop,
            resampler=settings.twilio_resampler,
        )
        logger.info(
            f"call {start.call_sid or '?'} on stream {start.stream_sid} "
            f"(auto hang-up {'on' if serializer.auto_hang_up else 'off: no credentials'})"
        )
        transport = make_transport(
            websocket, stock=settings.pipeline == "stock", serializer=serializer
        )
        await run_pipeline(websocket, transport, info, settings, models, registry, tts_factory)
        await asyncio.gather(*stop_tasks, return_exceptions=True)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code=code, reason=reason)
    except Exception:  # already gone
        pass


# -- the webhook ----------------------------------------------------------------------------


def stream_url(request: Request) -> str | None:
    """The ``ws(s)://`` URL of the media socket, as the caller of the webhook sees us.

    A proxy's ``X-Forwarded-Host``/``X-Forwarded-Proto`` win (first value of each);
    otherwise the request's own ``Host`` and scheme. Twilio connects only over TLS, so
    a plain-http request names ``wss`` too, unless it came to a loopback host (a local
    test) or a proxy said ``http``. None when the host is not a plain host[:port].
    """
    headers = request.headers
    host = headers.get("x-forwarded-host") or headers.get("host") or request.url.netloc or ""
    host = host.split(",")[0].strip()
    if not _HOST_RE.match(host):
        return None
    proto = (headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    if proto in ("https", "wss"):
        scheme = "wss"
    elif proto in ("http", "ws"):
        scheme = "ws"
    elif request.url.scheme in ("https", "wss"):
        scheme = "wss"
    else:
        hostname = (urlsplit(f"//{host}").hostname or "").lower()
        scheme = "ws" if hostname in _LOOPBACK_HOSTS else "wss"
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{scheme}://{host}{root}{TWILIO_PATH}"


def twiml_connect(url: str) -> str:
    """TwiML that connects the call to the media socket at ``url``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(url)}/></Connect></Response>"
    )


#: What a caller hears when every line is busy (the webhook answers this instead of
#: connecting the call, so the caller is told rather than left in silence).
BUSY_SPEECH = "Sorry, all our lines are busy right now. Please call again in a few minutes."


def twiml_busy(speech: str = BUSY_SPEECH) -> str:
    """TwiML that tells the caller the bot is busy and hangs up."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Say>{escape(speech)}</Say><Hangup/></Response>"
    )


def telephony_router() -> APIRouter:
    """``POST /telephony/twilio`` (TwiML) and ``WS /telephony/twilio`` (the call)."""
    router = APIRouter()

    @router.post(TWILIO_PATH, include_in_schema=False)
    async def twilio_webhook(request: Request) -> Response:
        url = stream_url(request)
        if url is None:
            return Response("bad Host header", status_code=400, media_type="text/plain")
        state = request.app.state
        busy = state.sessions.refusal(state.settings.max_sessions)
        if busy is not None:
            # Refused here, where the caller can still be told; the media socket
            # would refuse the same way (close 1013), but Twilio has no way to say it.
            logger.warning(f"call refused ({busy.reason}): {busy.message}")
            return Response(twiml_busy(), media_type="application/xml")
        return Response(twiml_connect(url), media_type="application/xml")

    @router.websocket(TWILIO_PATH)
    async def twilio_stream(websocket: WebSocket) -> None:
        state = websocket.app.state
        await run_call(
            websocket, state.settings, state.models, state.sessions, state.tts_factory, state.access
        )

    return router
