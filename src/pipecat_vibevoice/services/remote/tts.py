"""Pipecat TTS service for a remote pipecat-vibevoice TTS server (``WS /v1/tts/stream``).

The voice bot can run without a TTS model of its own: this service speaks to one or
more TTS servers (``python -m pipecat_vibevoice.serving``, or another bot's
``/v1/tts/stream``) over the protocol of docs/serving.md, and turns the server's
``chunk`` events and binary PCM frames into the same frames the in-process
:class:`~pipecat_vibevoice.services.VibeVoiceTTSService` pushes: ``TTSAudioRawFrame``s
and, through ``add_word_timestamps``, word-timed ``TTSTextFrame``s (one
:class:`~pipecat_vibevoice.services.word_timed.ContextClock` per audio context, as
there).

* **One websocket per service instance**, opened at start (or at the first utterance)
  and kept open: every utterance is one item on it, named by a fresh ``id``, and the
  reader task routes the server's events to the utterance by that ``id`` (a binary
  frame belongs to the ``chunk`` event just before it).
* ``TextAggregationMode.SENTENCE`` (default): one ``speak`` per sentence, its audio
  yielded inline by ``run_tts``. ``TextAggregationMode.TOKEN``: one open utterance per
  turn (audio context): ``speak`` with ``final: false`` on the first token, an
  ``append`` per token, ``flush`` at the end of the turn (``flush_audio``); a task per
  turn appends the audio to the audio context.
* **Interruption** sends ``cancel`` with the utterance's ``id``: the server stops within
  one chunk; nothing of the item follows its ``cancelled`` event.
* **Errors.** An ``error`` event of an item (refused text, unknown voice, bad value,
  engine failure, …) becomes an ``ErrorFrame`` naming the server's ``reason`` and
  message; the connection and the service stay usable.
* **Failover.** ``urls`` is a list: the service connects to the first one that answers
  ``ready`` (an unreachable server, a refused handshake or ``busy`` moves on to the
  next); when the socket closes, or an item is answered ``busy`` and there is another
  server, utterances that have not received audio yet are sent again on the next
  server. Rounds of connection attempts wait with exponential backoff.
* **A server that dies mid-utterance** (a pool replica killed, a pod evicted): the
  socket closes without the item's ``done``. An utterance that had already sent audio
  cannot be sent again (its start would repeat), so it ends in an ``ErrorFrame`` —
  never silence; one without audio yet is sent again. The next utterance opens a new
  socket, which a pool (Ray Serve's proxy, a Kubernetes Service) gives to a live
  server.
* ``token``: sent as ``Authorization: Bearer <token>``.

Services import no server code, so the few message shapes of the protocol are written
out here (docs/serving.md is their reference).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    StartFrame,
    TTSAudioRawFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.tracing.service_decorators import traced_tts
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from ...engine.controls import CONTROLS, VIBEVOICE_CONTROLS, ControlError
from ..word_timed import WordTimedTTSService

#: The numeric settings, each checked by its engine control (one range everywhere).
NUMERIC_SETTINGS = ("speed", "pitch", *VIBEVOICE_CONTROLS)

#: Error reasons that are the request's fault, not the server's (docs/serving.md).
REFUSED_REASONS = frozenset(
    {
        "text_too_long",
        "utterance_too_long",
        "empty_text",
        "invalid_value",
        "invalid_message",
        "unknown_voice",
        "queue_full",
        "rate_limited",
    }
)
#: Error reasons after which the item goes on (only that message was refused).
NON_TERMINAL_REASONS = frozenset({"utterance_too_long"})

#: How long an ``EndFrame`` waits for open token turns to finish speaking.
END_OF_TURNS_TIMEOUT_S = 30.0


class RemoteTTSUnavailable(ConnectionError):
    """No server of the list could be reached (or every one refused the connection)."""


class _Refused(ConnectionError):
    """A server answered the handshake with an ``error`` event instead of ``ready``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """``"ws://a/v1/tts/stream, ws://b/…"`` or a list → the list of URLs, blanks dropped."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    return [u.strip() for u in items if u and u.strip()]


async def open_tts_socket(url: str, token: str | None, timeout: float) -> tuple[Any, dict]:
    """Connect to ``url`` and read the greeting; returns (socket, ``ready`` event).

    Raises :class:`_Refused` when the server answers ``error`` (``unauthorized``,
    ``busy``, …) and ``OSError``/websockets' errors/``TimeoutError`` when it cannot be
    reached.
    """
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else None
    ws = await asyncio.wait_for(
        connect(url, additional_headers=headers, max_size=None, open_timeout=timeout), timeout
    )
    try:
        greeting = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    except BaseException:
        await ws.close()
        raise
    if greeting.get("type") != "ready":
        await ws.close()
        if greeting.get("type") == "error":
            raise _Refused(str(greeting.get("reason")), str(greeting.get("message")))
        raise ConnectionError(f"expected 'ready', got {greeting.get('type')!r}")
    return ws, greeting


async def probe_remote_tts(
    urls: str | Sequence[str], token: str | None = None, timeout: float = 3.0
) -> dict[str, Any]:
    """For ``/health``: which servers answer ``ready`` (each connection is closed at once)."""
    servers = []
    for url in split_urls(urls):
        entry: dict[str, Any] = {"url": url}
        started = time.perf_counter()
        try:
            ws, ready = await open_tts_socket(url, token, timeout)
            await ws.close()
            entry.update(
                reachable=True,
                engine=ready.get("engine"),
                sample_rate=ready.get("sample_rate"),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        except Exception as exc:
            entry.update(reachable=False, error=_describe(exc))
        servers.append(entry)
    return {
        "kind": "remote",
        "reachable": any(s["reachable"] for s in servers),
        "servers": servers,
    }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Chunk:
    """A ``chunk`` event with its audio, shaped for :meth:`ContextClock.place`."""

    start_s: float
    end_s: float
    words: list[tuple[str, float]]
    pcm: bytes


@dataclass
class _Item:
    """One utterance on the server: what was sent (to send it again) and its events."""

    id: str
    context_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    socket: Any = None  # the socket it was sent on
    audio: bool = False  # a chunk arrived: it can no longer be sent elsewhere
    audio_s: float = 0.0  # end of the last chunk received (for the error of a cut item)
    replica: str | None = None  # the pool replica that speaks it (its ``started`` event)
    resends: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Turn:
    """Token mode: one turn's open utterance and the task that plays it."""

    item: _Item
    task: asyncio.Task | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False


@dataclass
class RemoteTTSSettings(TTSSettings):
    """Runtime settings of :class:`RemoteTTSService`.

    Send ``TTSUpdateSettingsFrame(delta=RemoteTTSService.Settings(speed=1.2))`` to
    change them; they apply from the next utterance. An out-of-range number is refused
    with an ``ErrorFrame`` and the previous value stays; a voice the server does not
    know is refused by the server at the next utterance (``unknown_voice``).

    Attributes:
        voice: Voice name or index on the server, or ``None`` for its default voice.
        speed: Speaking rate, 0.5..2.0 (1.0 = natural).
        pitch: Pitch factor, 0.5..2.0 (1.0 = natural).
        cfg_scale: VibeVoice classifier-free guidance scale, (0, 10]; ``None`` = the
            server's. No effect on a Piper server.
        inference_steps: VibeVoice diffusion steps per latent, 1..100; ``None`` = the
            server's. No effect on a Piper server.

    """

    speed: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    pitch: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    cfg_scale: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    inference_steps: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class RemoteTTSService(WordTimedTTSService):
    """Speak through a remote pipecat-vibevoice TTS server (``WS /v1/tts/stream``).

    Example::

        tts = RemoteTTSService(
            ["ws://tts-a:8000/v1/tts/stream", "ws://tts-b:8000/v1/tts/stream"],
            token=os.environ["PIPECAT_VIBEVOICE_SERVING_TOKEN"],
        )
        pipeline = Pipeline([..., llm, tts, transport.output(), ...])

    Nothing blocks the event loop: the model runs on the server; here one reader task
    per connection routes its events, and the frames of an utterance are pushed as its
    chunks arrive. Connecting (at start, after a lost connection) waits at most
    ``connect_timeout_s`` per server and ``connect_rounds`` rounds over the list, with
    exponential backoff between rounds; when no server answers, the utterance ends in
    an ``ErrorFrame`` and the next one tries again.

    What can change at runtime, through ``TTSUpdateSettingsFrame`` (from the next
    utterance): ``voice``, ``speed``, ``pitch``, and for a VibeVoice server
    ``cfg_scale`` and ``inference_steps``. The URLs, the token and the output sample
    rate are fixed for the service's life.
    """

    Settings = RemoteTTSSettings
    _settings: Settings

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        settings: Settings | None = None,
        text_aggregation_mode: TextAggregationMode | None = None,
        sample_rate: int | None = 24000,
        connect_timeout_s: float = 5.0,
        connect_rounds: int = 3,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service.

        Args:
            urls: The server's websocket URL, or several (a list or a comma-separated
                string), tried in order.
            token: Bearer token the servers want (``--tts-token`` there), if any.
            settings: Initial runtime settings (voice: the server's default; speed and
                pitch 1.0).
            text_aggregation_mode: ``SENTENCE`` (default) or ``TOKEN`` (one open
                utterance per turn, fed token by token).
            sample_rate: Output rate (the server's audio is resampled when it differs);
                ``None`` takes the pipeline's output rate.
            connect_timeout_s: Longest wait for one server's handshake and ``ready``.
            connect_rounds: Rounds over the URL list before an utterance gives up.
            backoff_base_s: First wait between rounds; doubles per failed round.
            backoff_max_s: Longest wait between rounds.
            options: Extra fields of every ``speak`` (e.g. ``seed``).
            **kwargs: Passed to :class:`TTSService`.

        """
        self._urls = split_urls(urls)
        if not self._urls:
            raise ValueError("RemoteTTSService needs at least one server URL")
        if connect_rounds < 1:
            raise ValueError("connect_rounds must be >= 1")
        default_settings = self.Settings(
            model=None,
            voice=None,
            language=None,
            speed=1.0,
            pitch=1.0,
            cfg_scale=None,
            inference_steps=None,
        )
        if settings is not None:
            settings = copy.copy(settings)
            settings.extra = dict(settings.extra)
            for name in NUMERIC_SETTINGS:
                value = getattr(settings, name)
                if is_given(value) and value is not None:
                    setattr(settings, name, CONTROLS[name].check(value))
            default_settings.apply_update(settings)

        for name in ("push_start_frame", "push_stop_frames"):
            kwargs.pop(name, None)
        if text_aggregation_mode == TextAggregationMode.TOKEN:
            kwargs["reuse_context_id_within_turn"] = True
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            pause_frame_processing=False,
            text_aggregation_mode=text_aggregation_mode,
            sample_rate=sample_rate,
            settings=default_settings,
            **kwargs,
        )
        self._token = token or None
        self._connect_timeout_s = connect_timeout_s
        self._connect_rounds = connect_rounds
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._options = dict(options or {})

        # The connection: one socket, its reader, and where it goes.
        self._socket: Any = None
        self._ready: dict[str, Any] = {}
        self._url_index = 0
        self._reader: asyncio.Task | None = None
        self._connect_lock = asyncio.Lock()
        self._failed_rounds = 0  # consecutive, for the backoff
        self._last_error: str | None = None
        self._closing = False
        self._background: set[asyncio.Task] = set()
        # Utterances by id, token turns by context, clocks by context.
        self._items: dict[str, _Item] = {}
        self._turns: dict[str, _Turn] = {}
        self._replica: str | None = None

    # -- what others may read -----------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The servers, in the order they are tried."""
        return list(self._urls)

    @property
    def connected_url(self) -> str | None:
        """The server the socket is open to, if one is."""
        return self._urls[self._url_index] if self._socket is not None else None

    @property
    def replica(self) -> str | None:
        """The pool replica that began the latest utterance (its ``started`` event names it).

        ``None`` before the first utterance or when the server is not one of a pool.
        """
        return self._replica

    @property
    def server_info(self) -> dict[str, Any]:
        """The last ``ready`` event (engine, voices, sample rate, limits)."""
        return dict(self._ready)

    def can_generate_metrics(self) -> bool:
        """TTFB, processing and usage metrics are all meaningful."""
        return True

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        """Open the socket now, so the first utterance does not pay for it (best effort)."""
        await super().start(frame)
        self._closing = False
        if self._is_streaming_tokens:
            logger.info(f"{self}: token mode, one remote utterance per turn")
        try:
            await self._connect()
        except RemoteTTSUnavailable as exc:
            logger.warning(f"{self}: no TTS server reachable at start ({exc}); will retry")

    async def stop(self, frame: EndFrame) -> None:
        """Let open token turns finish speaking, then close the socket."""
        for context_id in list(self._turns):
            await self._close_turn(context_id)
        tasks = [t.task for t in self._turns.values() if t.task and not t.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=END_OF_TURNS_TIMEOUT_S)
        await super().stop(frame)
        await self._cancel_turns()
        await self._disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop everything at once."""
        await self._cancel_turns()
        await self._disconnect()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        """Close the socket and forget every utterance."""
        await self._cancel_turns()
        await self._disconnect()
        await super().cleanup()

    # -- connection ---------------------------------------------------------------------

    def _backoff_s(self) -> float:
        if not self._failed_rounds:
            return 0.0
        return min(self._backoff_max_s, self._backoff_base_s * 2 ** (self._failed_rounds - 1))

    async def _connect(self, skip: Any = None) -> Any:
        """The open socket, connecting (with failover and backoff) when there is none.

        ``skip``: a socket known to be unusable (closed, or its server said ``busy``);
        if it is still the current one, it is closed and the next URL is tried first.
        """
        async with self._connect_lock:
            if skip is not None and skip is self._socket:
                await self._drop_socket(advance=True)
            if self._socket is not None:
                return self._socket
            errors: list[str] = []
            for _ in range(self._connect_rounds):
                delay = self._backoff_s()
                if delay:
                    await asyncio.sleep(delay)
                for step in range(len(self._urls)):
                    index = (self._url_index + step) % len(self._urls)
                    url = self._urls[index]
                    try:
                        ws, ready = await open_tts_socket(url, self._token, self._connect_timeout_s)
                    except Exception as exc:
                        errors.append(f"{url}: {_describe(exc)}")
                        logger.warning(f"{self}: TTS server {url} unusable: {_describe(exc)}")
                        continue
                    self._socket, self._ready, self._url_index = ws, ready, index
                    self._failed_rounds = 0
                    self._last_error = None
                    self._settings.model = str(ready.get("engine") or "") or None
                    self._sync_model_name_to_metrics()
                    self._reader = asyncio.get_running_loop().create_task(
                        self._read(ws), name=f"remote-tts-reader-{index}"
                    )
                    logger.info(f"{self}: connected to {url} ({ready.get('engine')})")
                    return ws
                self._failed_rounds += 1
            self._last_error = "; ".join(errors[-len(self._urls) :])
            raise RemoteTTSUnavailable(f"no TTS server reachable ({self._last_error})")

    async def _drop_socket(self, advance: bool) -> None:
        """Close the current socket (its reader reports its items lost)."""
        ws, self._socket = self._socket, None
        if advance:
            self._url_index = (self._url_index + 1) % len(self._urls)
        if ws is not None:
            try:
                await ws.close()
            except Exception:
                pass

    async def _disconnect(self) -> None:
        self._closing = True
        async with self._connect_lock:
            await self._drop_socket(advance=False)
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            try:
                await asyncio.wait_for(asyncio.shield(reader), 2.0)
            except Exception:
                reader.cancel()
        for task in list(self._background):
            task.cancel()

    async def _read(self, ws: Any) -> None:
        """Route one socket's events to their items, until it closes."""
        chunk_event: dict[str, Any] | None = None
        cause = "the TTS server closed the connection"
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    if chunk_event is not None:
                        self._route(chunk_event.get("id"), ("chunk", chunk_event, frame))
                    chunk_event = None
                    continue
                try:
                    event = json.loads(frame)
                except ValueError:
                    logger.warning(f"{self}: unreadable event from the TTS server: {frame[:200]!r}")
                    continue
                kind = event.get("type")
                if kind == "chunk":
                    chunk_event = event
                elif kind in ("started", "done", "error"):
                    self._route_or_log(event)
                elif kind == "cancelled":
                    for item_id in event.get("ids", ()):
                        self._route(item_id, ("cancelled", event, b""))
                elif kind == "closing":
                    cause = f"the TTS server is closing ({event.get('reason')})"
        except Exception as exc:
            cause = f"lost the TTS server: {_describe(exc)}"
        finally:
            if self._socket is ws:
                self._socket = None
            for item in list(self._items.values()):
                if item.socket is ws:
                    item.socket = None
                    item.events.put_nowait(("lost", {"message": cause}, b""))
            if not self._closing and self._items:
                logger.warning(f"{self}: {cause}")

    def _route(self, item_id: Any, entry: tuple[str, dict, bytes]) -> bool:
        item = self._items.get(str(item_id)) if item_id is not None else None
        if item is None:
            return False
        item.events.put_nowait(entry)
        return True

    def _route_or_log(self, event: dict[str, Any]) -> None:
        if self._route(event.get("id"), (event["type"], event, b"")):
            return
        if event["type"] == "error" and event.get("reason") != "unknown_id":
            # Not about an item of ours (rate limited, malformed, …): say so, go on.
            logger.warning(
                f"{self}: TTS server error: {event.get('reason')}: {event.get('message')}"
            )

    async def _send_item(self, item: _Item, message: dict[str, Any]) -> None:
        """Record ``message`` as part of ``item`` and send it on the item's socket.

        A send that fails is not an error here: the reader reports the item lost, and
        :meth:`_resend` sends everything recorded again on the next socket.
        """
        async with item.lock:
            item.messages.append(message)
            if item.socket is not None:
                try:
                    await item.socket.send(json.dumps(message))
                except Exception as exc:
                    logger.debug(f"{self}: send failed ({_describe(exc)}); will resend")

    async def _submit(self, item: _Item) -> None:
        """Send ``item``'s recorded messages on the current socket (connecting first)."""
        async with item.lock:
            ws = await self._connect()
            item.socket = ws
            self._items[item.id] = item
            for message in item.messages:
                await ws.send(json.dumps(message))

    async def _resend(self, item: _Item, skip: Any) -> None:
        """Send ``item`` again on another socket (its previous one closed or was busy)."""
        item.resends += 1
        async with item.lock:
            item.socket = None
        # Entries of the old socket (a late "lost") must not reach the new attempt.
        while not item.events.empty():
            item.events.get_nowait()
        await self._connect(skip=skip)
        await self._submit(item)

    def _cancel_remote(self, item: _Item) -> None:
        """Ask the server to stop ``item`` (fire and forget: called from cleanups)."""
        self._items.pop(item.id, None)
        ws = item.socket
        if ws is None:
            return

        async def send() -> None:
            try:
                await ws.send(json.dumps({"type": "cancel", "id": item.id}))
            except Exception:
                pass

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _speak_message(self, item_id: str, text: str, final: bool) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "speak",
            "id": item_id,
            "text": text,
            "final": final,
            "speed": self._settings.speed,
            "pitch": self._settings.pitch,
            **self._options,
        }
        if self._settings.voice is not None:
            message["voice"] = self._settings.voice
        for name in VIBEVOICE_CONTROLS:
            value = getattr(self._settings, name)
            if is_given(value) and value is not None:
                message[name] = value
        return message

    # -- settings -----------------------------------------------------------------------

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Check numbers against the engine's control ranges; refused fields stay."""
        for name in NUMERIC_SETTINGS:
            value = getattr(delta, name, NOT_GIVEN)
            if not is_given(value) or value is None:
                continue
            try:
                setattr(delta, name, CONTROLS[name].check(value))
            except ControlError as exc:
                setattr(delta, name, NOT_GIVEN)
                await self.push_error(
                    error_msg=f"TTS setting {name} refused: {exc}",
                    exception=exc,
                    category=ErrorCategory.APPLICATION,
                )
        changed = await super()._update_settings(delta)
        unhandled = {k for k in changed if k in ("model", "language") or k in self._settings.extra}
        if unhandled:
            self._warn_unhandled_updated_settings(unhandled)
        return changed

    # -- synthesis ----------------------------------------------------------------------

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Speak ``text`` (a sentence, or one token in TOKEN mode) in ``context_id``.

        Yields the utterance's ``TTSAudioRawFrame``s as its chunks arrive, or an
        ``ErrorFrame`` naming the server's reason. In TOKEN mode it yields ``None``:
        the turn's audio comes from its task.
        """
        if self._is_streaming_tokens:
            error = await self._feed_token(text, context_id)
            yield error
            return
        await self.start_tts_usage_metrics(text)
        item = _Item(id=uuid.uuid4().hex[:16], context_id=context_id)
        item.messages.append(self._speak_message(item.id, text, final=True))
        try:
            await self._submit(item)
        except Exception as exc:
            self._items.pop(item.id, None)
            yield self._unreachable(exc, text)
            return
        finished = False
        try:
            async for frame in self._frames(item):
                yield frame
            finished = True
        finally:
            if finished:
                self._items.pop(item.id, None)
            else:  # interrupted (the task was cancelled) or the consumer stopped
                self._cancel_remote(item)

    def _unreachable(self, exc: BaseException, text: str) -> ErrorFrame:
        logger.error(f"{self}: {exc}")
        return ErrorFrame(
            error=f"TTS server unreachable; cannot speak [{text[:80]}]: {exc}",
            exception=exc if isinstance(exc, Exception) else None,
            category=ErrorCategory.SERVER,
        )

    async def _frames(self, item: _Item) -> AsyncIterator[Frame]:
        """The item's events as frames, until ``done``, ``cancelled`` or an error.

        The words of each chunk are reported with ``add_word_timestamps`` once its
        audio frame was taken (so they follow their audio in the context), on the
        context's timeline (:class:`~..word_timed.ContextClock`), exactly as the in-process service.
        """
        while True:
            kind, event, pcm = await item.events.get()
            if kind == "started":
                item.replica = event.get("replica")
                if item.replica:
                    self._replica = item.replica
                    logger.debug(f"{self}: utterance {item.id} on replica {item.replica}")
                continue
            if kind == "chunk":
                item.audio = True
                chunk = _Chunk(
                    start_s=float(event.get("start_s", 0.0)),
                    end_s=float(event.get("end_s", 0.0)),
                    words=[(str(w), float(t)) for w, t in event.get("words") or ()],
                    pcm=pcm,
                )
                item.audio_s = chunk.end_s
                words = self._place_words(item.context_id, chunk)
                yield await self._audio_frame(pcm, item.context_id)
                await self._report_words(item.context_id, words)
            elif kind in ("done", "cancelled"):
                return
            elif kind == "error":
                reason = str(event.get("reason"))
                if reason in NON_TERMINAL_REASONS:
                    yield self._error_frame(item, event)
                    continue
                if reason == "busy" and self._may_resend(item):
                    logger.warning(f"{self}: {self.connected_url} busy; trying the next server")
                    if await self._try_resend(item, item.socket):
                        continue
                yield self._error_frame(item, event)
                return
            elif kind == "lost":
                if self._may_resend(item, lost=True) and await self._try_resend(item, None):
                    continue
                yield self._lost_frame(item, str(event.get("message")))
                return

    def _lost_frame(self, item: _Item, cause: str) -> ErrorFrame:
        """The error of an utterance whose server went away before its ``done``."""
        where = f" (replica {item.replica})" if item.replica else ""
        if item.audio:
            said = f"cut off after {item.audio_s:.2f} s of audio"
        else:
            said = "lost before any audio"
        logger.warning(f"{self}: TTS utterance {item.id} {said}{where}: {cause}")
        return ErrorFrame(
            error=f"TTS utterance {said}{where}: {cause}", category=ErrorCategory.SERVER
        )

    def _may_resend(self, item: _Item, lost: bool = False) -> bool:
        """Only an item with no audio yet may go elsewhere (its audio would repeat)."""
        if item.audio:
            return False
        limit = len(self._urls) * self._connect_rounds if lost else len(self._urls) - 1
        return item.resends < limit

    async def _try_resend(self, item: _Item, skip: Any) -> bool:
        try:
            await self._resend(item, skip)
            return True
        except Exception as exc:
            logger.warning(f"{self}: could not send utterance again: {_describe(exc)}")
            return False

    def _error_frame(self, item: _Item, event: dict[str, Any]) -> ErrorFrame:
        reason = str(event.get("reason"))
        message = str(event.get("message"))
        refused = reason in REFUSED_REASONS
        if refused:
            self._refused(item.context_id)
        logger.warning(f"{self}: TTS server error {reason}: {message}")
        return ErrorFrame(
            error=f"TTS request {'refused' if refused else 'failed'} ({reason}): {message}",
            category=ErrorCategory.APPLICATION if refused else ErrorCategory.SERVER,
        )

    async def _audio_frame(self, pcm: bytes, context_id: str) -> Frame:
        rate = int(self._ready.get("sample_rate") or self.sample_rate)
        if rate != self.sample_rate:
            pcm = await self._resampler.resample(pcm, rate, self.sample_rate)
        return TTSAudioRawFrame(
            audio=pcm, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
        )

    # -- token mode ---------------------------------------------------------------------

    async def _feed_token(self, token: str, context_id: str) -> ErrorFrame | None:
        """Append a token to its turn's utterance, opening it (``speak``) on the first."""
        turn = self._turns.get(context_id)
        if turn is not None:
            if not turn.failed and not turn.closed.is_set():
                await self._send_item(turn.item, {"type": "append", "text": token})
            return None
        item = _Item(id=uuid.uuid4().hex[:16], context_id=context_id)
        item.messages.append(self._speak_message(item.id, token, final=False))
        turn = self._turns[context_id] = _Turn(item)
        try:
            await self._submit(item)
        except Exception as exc:
            self._items.pop(item.id, None)
            turn.failed = True
            turn.task = self.create_task(self._wait_failed_turn(turn))
            return self._unreachable(exc, token)
        turn.task = self.create_task(self._speak_turn(turn), name=f"tts-turn-{context_id[:8]}")
        return None

    async def _wait_failed_turn(self, turn: _Turn) -> None:
        """A turn that could not start: drop its tokens until the turn ends."""
        try:
            await turn.closed.wait()
        finally:
            if self._turns.get(turn.item.context_id) is turn:
                del self._turns[turn.item.context_id]

    async def _speak_turn(self, turn: _Turn) -> None:
        """Play one turn's utterance into its audio context, then close the context."""
        item, context_id = turn.item, turn.item.context_id
        finished = False
        try:
            async for frame in self._frames(item):
                await self.append_to_audio_context(context_id, frame)
            finished = True
            turn.failed = True  # an error ended it early: later tokens are dropped
            await turn.closed.wait()
            if self.audio_context_available(context_id):
                await self.remove_audio_context(context_id)
        finally:
            if self._turns.get(context_id) is turn:
                del self._turns[context_id]
            if finished:
                self._items.pop(item.id, None)
            else:
                self._cancel_remote(item)

    async def _close_turn(self, context_id: str) -> None:
        turn = self._turns.get(context_id)
        if turn is None or turn.closed.is_set():
            return
        turn.closed.set()
        if not turn.failed:
            await self._send_item(turn.item, {"type": "flush"})

    async def flush_audio(self, context_id: str | None = None) -> None:
        """End of the turn's text: ``flush``, so the server speaks the rest and finishes."""
        for cid in [context_id] if context_id is not None else list(self._turns):
            await self._close_turn(cid)

    async def _cancel_turn(self, context_id: str) -> None:
        turn = self._turns.pop(context_id, None)
        if turn is None:
            return
        turn.closed.set()
        if turn.task is not None and not turn.task.done():
            await self.cancel_task(turn.task)  # its cleanup sends ``cancel``
        self._cancel_remote(turn.item)

    async def _cancel_turns(self) -> None:
        for context_id in list(self._turns):
            await self._cancel_turn(context_id)

    def _turn_ids(self) -> list[str]:
        return list(self._turns)
