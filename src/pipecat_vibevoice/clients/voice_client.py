"""A Python voice client for ``WS /ws``: what tests and benchmarks talk through.

It behaves like a person with a speaker: the microphone sends 20 ms frames of
16 kHz PCM at real time (silence between utterances, as a live mic would), and bot
audio is *played* by :class:`PlaybackModel` at real time as it arrives — paused on
``playback-pause``, resumed on ``playback-resume``, flushed on ``interruption``.
All timing is measured on that model, i.e. on what the person would hear.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: 10 ms blocks of bot audio with RMS over this (int16 units) count as audible.
AUDIBLE_RMS = 300.0
MIC_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = MIC_RATE * FRAME_MS // 1000


def rms(pcm: np.ndarray) -> float:
    """Root mean square of int16 samples."""
    if pcm.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


@dataclass
class _Block:
    """10 ms of bot audio waiting to be (or being) played."""

    audible: bool
    seconds: float


class PlaybackModel:
    """Real-time player of received bot audio, kept as a timeline of audible spans.

    Chunks start playing on arrival when the player is idle (plus ``jitter_secs``),
    otherwise right after what is queued. ``pause`` stops the sound at once and
    keeps the rest; ``resume`` plays it; ``flush`` drops it. Every played 10 ms block
    is recorded, so "when was the bot last audible" has 10 ms resolution.
    """

    def __init__(self, sample_rate: int = 24000, jitter_secs: float = 0.0) -> None:
        self.rate = sample_rate
        self.jitter = jitter_secs
        self.block = sample_rate // 100
        self._pending: list[_Block] = []  # not yet scheduled (paused)
        self._scheduled: list[tuple[float, float, bool]] = []  # start, end, audible
        self._paused = False
        self.played: list[tuple[float, float]] = []  # audible spans actually heard
        self.flushes: list[float] = []
        self.pauses: list[float] = []
        self.resumes: list[float] = []
        self.received_audible: list[float] = []

    # -- input ----------------------------------------------------------------------

    def feed(self, pcm: bytes, now: float) -> None:
        """Queue received audio (int16 mono at ``sample_rate``)."""
        self._settle(now)
        samples = np.frombuffer(pcm, dtype="<i2")
        blocks = [
            _Block(
                rms(samples[i : i + self.block]) >= AUDIBLE_RMS,
                len(samples[i : i + self.block]) / self.rate,
            )
            for i in range(0, len(samples), self.block)
        ]
        if any(b.audible for b in blocks):
            self.received_audible.append(now)
        if self._paused:
            self._pending.extend(blocks)
            return
        self._schedule(blocks, now)

    def pause(self, now: float) -> None:
        """Stop the sound now; keep what was not played yet."""
        self._settle(now)
        if self._paused:
            return
        self._paused = True
        self.pauses.append(now)
        self._pending = self._cut(now) + self._pending

    def resume(self, now: float) -> None:
        """Play what was kept, from now."""
        self._settle(now)
        if not self._paused:
            return
        self._paused = False
        self.resumes.append(now)
        pending, self._pending = self._pending, []
        self._schedule(pending, now)

    def flush(self, now: float) -> None:
        """Drop everything not yet played (interruption)."""
        self._settle(now)
        self.flushes.append(now)
        self._cut(now)
        self._pending = []
        self._paused = False

    # -- queries ----------------------------------------------------------------------

    def audible_spans(self, now: float) -> list[tuple[float, float]]:
        """Audible spans heard so far, plus what is scheduled up to ``now``."""
        self._settle(now)
        spans = list(self.played)
        for start, end, audible in self._scheduled:
            if audible and start < now:
                spans.append((start, min(end, now)))
        return _merge(spans)

    def last_audible_between(self, t0: float, t1: float) -> float | None:
        """End of the last audible sound heard within [t0, t1] (None: silent throughout)."""
        last = None
        for start, end in self.audible_spans(t1):
            if end > t0 and start < t1:
                last = min(end, t1)
        return last

    def first_audible_after(self, t0: float, now: float | None = None) -> float | None:
        """Start of the first audible sound heard at or after ``t0``."""
        now = time.monotonic() if now is None else now
        for start, end in self.audible_spans(now):
            if end > t0:
                return max(start, t0)
        return None

    def is_audible(self, now: float) -> bool:
        """Whether the person hears the bot at ``now``."""
        self._settle(now)
        blocks = [(s, e) for s, e, audible in self._scheduled if audible]
        return any(s <= now < e for s, e in self.played + blocks)

    def queued_seconds(self, now: float) -> float:
        """Audio waiting to be played (scheduled or paused)."""
        self._settle(now)
        ahead = sum(e - max(s, now) for s, e, _ in self._scheduled)
        return ahead + sum(b.seconds for b in self._pending)

    # -- internals ----------------------------------------------------------------

    def _schedule(self, blocks: list[_Block], now: float) -> None:
        start = self._scheduled[-1][1] if self._scheduled else now + self.jitter
        start = max(start, now)
        for b in blocks:
            self._scheduled.append((start, start + b.seconds, b.audible))
            start += b.seconds

    def _settle(self, now: float) -> None:
        """Move blocks that finished playing into ``played``."""
        keep = []
        for start, end, audible in self._scheduled:
            if end <= now:
                if audible:
                    self.played.append((start, end))
            else:
                keep.append((start, end, audible))
        self._scheduled = keep

    def _cut(self, now: float) -> list[_Block]:
        """Stop at ``now``: keep the heard part, return the unheard rest."""
        rest: list[_Block] = []
        for start, end, audible in self._scheduled:
            if start < now:
                if audible:
                    self.played.append((start, now))
                if end > now:
                    rest.append(_Block(audible, end - now))
            else:
                rest.append(_Block(audible, end - start))
        self._scheduled = []
        return rest


def _merge(spans: list[tuple[float, float]], gap: float = 0.0005) -> list[tuple[float, float]]:
    spans = sorted(spans)
    merged: list[tuple[float, float]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1] + gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


@dataclass
class Utterance:
    """Timing of one thing the client said (monotonic seconds)."""

    sent_at: float
    onset: float | None = None  # first audible 20 ms frame sent
    end: float | None = None  # last audible 20 ms frame sent
    done: float | None = None  # last frame of the utterance sent


@dataclass
class ClientEvents:
    """Everything received, with monotonic arrival times."""

    transcripts: list[tuple[float, str, bool]] = field(default_factory=list)
    bot_text: list[tuple[float, str]] = field(default_factory=list)
    messages: list[tuple[float, dict]] = field(default_factory=list)
    interruptions: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    audio_frames: int = 0
    #: (arrival time, seconds of bot audio queued in the player right after it).
    audio_arrivals: list[tuple[float, float]] = field(default_factory=list)


async def wait_until(
    predicate: Any, timeout: float, changed: asyncio.Event, closed: asyncio.Event
) -> Any:
    """``predicate()``'s first truthy value, checked on every ``changed`` and every 20 ms.

    Raises ``TimeoutError`` after ``timeout`` or once ``closed`` is set.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0 or closed.is_set():
            raise TimeoutError("condition not met in time")
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), min(0.02, remaining))
        except TimeoutError:
            pass


class VoiceClient:
    """Websocket voice client with a real-time microphone and player (see module doc)."""

    def __init__(
        self,
        url: str,
        *,
        out_rate: int = 24000,
        jitter_secs: float = 0.0,
        custom_messages: bool = True,
    ) -> None:
        """Create the client.

        Args:
            url: The bot's ``ws://…/ws``.
            out_rate: Sample rate of the bot's audio.
            jitter_secs: Delay before the player starts a chunk that finds it idle.
            custom_messages: Obey our ``playback-pause``/``-resume``/``-flush`` messages.
                False plays like a client that knows only Pipecat's standard frames
                (it flushes on ``interruption`` only), e.g. Pipecat's own clients.

        """
        self.url = url
        self.custom_messages = custom_messages
        self.player = PlaybackModel(out_rate, jitter_secs)
        self.events = ClientEvents()
        self._ws: Any = None
        self._mic: asyncio.Queue[tuple[np.ndarray, Utterance, asyncio.Future]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self.connected_at: float | None = None
        #: How the server closed the socket (e.g. 1013 "server busy"), once closed.
        self.close_code: int | None = None
        self.close_reason: str = ""

    async def __aenter__(self) -> VoiceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket and start the microphone and receiver loops."""
        import websockets

        self._ws = await websockets.connect(self.url, max_size=None, open_timeout=10)
        self.connected_at = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._receive(), name="client-rx"),
            asyncio.create_task(self._microphone(), name="client-mic"),
        ]

    async def close(self) -> None:
        """Hang up."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._ws is not None:
            await self._ws.close()

    # -- microphone -------------------------------------------------------------------

    async def say(self, pcm16k: np.ndarray) -> Utterance:
        """Speak int16 16 kHz audio into the mic at real time; returns when sent."""
        utt = Utterance(sent_at=time.monotonic())
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._mic.put((pcm16k.astype(np.int16), utt, done))
        await done
        return utt

    def say_nowait(self, pcm16k: np.ndarray) -> tuple[Utterance, asyncio.Future]:
        """Start speaking; returns the utterance record and a future for its end."""
        utt = Utterance(sent_at=time.monotonic())
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._mic.put_nowait((pcm16k.astype(np.int16), utt, done))
        return utt, done

    async def send_raw(self, data: bytes | str) -> None:
        """Send anything (tests of malformed input)."""
        await self._ws.send(data)

    async def _microphone(self) -> None:
        import websockets
        from pipecat.frames.protobufs import frames_pb2

        silence = np.zeros(FRAME_SAMPLES, np.int16)
        next_at = time.monotonic()
        current: tuple[np.ndarray, Utterance, asyncio.Future] | None = None
        pos = 0
        while True:
            if current is None and not self._mic.empty():
                current, pos = self._mic.get_nowait(), 0
            if current is not None:
                audio, utt, done = current
                frame = audio[pos : pos + FRAME_SAMPLES]
                pos += FRAME_SAMPLES
                if len(frame) < FRAME_SAMPLES:
                    frame = np.concatenate([frame, silence[: FRAME_SAMPLES - len(frame)]])
            else:
                frame = silence
            now = time.monotonic()
            msg = frames_pb2.Frame()
            msg.audio.audio = frame.tobytes()
            msg.audio.sample_rate = MIC_RATE
            msg.audio.num_channels = 1
            try:
                await self._ws.send(msg.SerializeToString())
            except websockets.ConnectionClosed as exc:
                # The server hung up (e.g. refused the session): whoever waits for an
                # utterance to be sent hears so instead of waiting for ever.
                pending = [current] if current is not None else []
                while not self._mic.empty():
                    pending.append(self._mic.get_nowait())
                for _, _, done in pending:
                    if not done.done():
                        done.set_exception(ConnectionError(f"the server closed the socket: {exc}"))
                return
            if current is not None:
                audio, utt, done = current
                if rms(frame) >= AUDIBLE_RMS:
                    if utt.onset is None:
                        utt.onset = now
                    utt.end = now + FRAME_MS / 1000
                if pos >= len(audio):
                    utt.done = now + FRAME_MS / 1000
                    if not done.done():
                        done.set_result(utt)
                    current = None
            next_at += FRAME_MS / 1000
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()  # fell behind: do not burst

    # -- receiving --------------------------------------------------------------------

    async def _receive(self) -> None:
        import websockets
        from pipecat.frames.protobufs import frames_pb2

        try:
            async for data in self._ws:
                now = time.monotonic()
                if isinstance(data, str):
                    continue
                frame = frames_pb2.Frame.FromString(data)
                kind = frame.WhichOneof("frame")
                if kind == "audio":
                    self.events.audio_frames += 1
                    self.player.feed(frame.audio.audio, now)
                    self.events.audio_arrivals.append((now, self.player.queued_seconds(now)))
                elif kind == "interruption":
                    self.events.interruptions.append(now)
                    self.player.flush(now)
                elif kind == "message":
                    self._on_message(json.loads(frame.message.data), now)
                elif kind == "transcription":
                    self.events.transcripts.append((now, frame.transcription.text, True))
                elif kind == "text":
                    self.events.bot_text.append((now, frame.text.text))
                self._changed.set()
        except websockets.ConnectionClosed:
            pass  # a close with an error code (e.g. 1013 busy): kept in close_code
        finally:
            self.close_code = getattr(self._ws, "close_code", None)
            self.close_reason = getattr(self._ws, "close_reason", None) or ""
            self.closed.set()
            self._changed.set()

    def _on_message(self, msg: dict, now: float) -> None:
        self.events.messages.append((now, msg))
        data = msg.get("data") or {}
        kind = msg.get("type")
        if kind == "server-message":  # ours: data.type says which
            kind = data.get("type")
            if not self.custom_messages:
                return
        if kind == "playback-pause":
            self.player.pause(now)
        elif kind == "playback-resume":
            self.player.resume(now)
        elif kind == "playback-flush":
            self.player.flush(now)
        elif kind == "error":
            self.events.errors.append((now, str(data.get("error", data))))
        elif kind == "user-transcription":
            self.events.transcripts.append((now, data.get("text", ""), bool(data.get("final"))))
        elif kind == "bot-output" and data.get("text"):
            self.events.bot_text.append((now, data["text"]))

    # -- waiting ----------------------------------------------------------------------

    async def wait_for(self, predicate, timeout: float) -> Any:
        """Poll ``predicate()`` on every event (and every 20 ms) until truthy."""
        return await wait_until(predicate, timeout, self._changed, self.closed)

    async def wait_bot_audio(self, after: float, timeout: float = 10.0) -> float:
        """Time the bot first became audible at or after ``after``."""
        return await self.wait_for(lambda: self.player.first_audible_after(after), timeout)

    async def wait_bot_quiet(self, quiet_secs: float = 1.0, timeout: float = 30.0) -> float:
        """Wait until nothing is queued or heard for ``quiet_secs``; returns when."""

        def quiet() -> float | None:
            now = time.monotonic()
            if self.player.queued_seconds(now) > 0:
                return None
            spans = self.player.audible_spans(now)
            last = spans[-1][1] if spans else 0.0
            recent = [t for t in self.player.received_audible if t > now - quiet_secs]
            return now if now - last >= quiet_secs and not recent else None

        return await self.wait_for(quiet, timeout)

    def final_transcripts(self, after: float = 0.0) -> list[str]:
        """Final user transcripts received after ``after``."""
        return [t for ts, t, final in self.events.transcripts if final and ts >= after]
