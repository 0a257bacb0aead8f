"""A loopback stand-in for Twilio: the carrier side of one Media Streams call.

No account and no network: a websocket client that speaks Twilio's documented protocol
to ``WS /telephony/twilio`` the way Twilio does:

* ``connected``, then ``start`` (streamSid, callSid, accountSid, mediaFormat);
* the caller's microphone as ``media``: 20 ms of 8 kHz G.711 μ-law (160 bytes, base64)
  every 20 ms at real time, silence between utterances, as a phone line sends;
* ``stop`` when the caller hangs up.

The bot's ``media`` is *played* at real time as it arrives (a
:class:`~pipecat_vibevoice.clients.voice_client.PlaybackModel` at 8 kHz), and a
``clear`` drops what is buffered, as Twilio does; so every time measured here is what
the caller would hear. Used by ``tests/bot/test_telephony.py`` and
``bench/telephony_latency.py``.

``audioop`` is gone in Python 3.13, so the G.711 codec is a few lines of numpy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipecat_vibevoice.clients.voice_client import AUDIBLE_RMS, PlaybackModel, rms, wait_until

LINE_RATE = 8000
MIC_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = LINE_RATE * FRAME_MS // 1000  # 160 μ-law bytes per media message
#: Speech onset and end are placed to this resolution inside a 20 ms frame.
ONSET_BLOCK = LINE_RATE * 5 // 1000

# -- G.711 μ-law --------------------------------------------------------------------------

_BIAS = 0x84
_CLIP = 32635


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """Int16 samples → G.711 μ-law bytes (the classic biased, segmented encoding)."""
    x = pcm.astype(np.int32)
    sign = (x < 0).astype(np.int32) << 7
    magnitude = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes → int16 samples."""
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def to_line_rate(pcm16k: np.ndarray) -> np.ndarray:
    """16 kHz int16 → 8 kHz int16 through a telephone-band low-pass (no aliasing)."""
    taps = np.arange(-32, 33)
    cutoff = 3600 / MIC_RATE  # cycles per sample
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(len(taps))
    kernel /= kernel.sum()
    filtered = np.convolve(pcm16k.astype(np.float64), kernel, mode="same")[::2]
    return np.clip(np.round(filtered), -32768, 32767).astype(np.int16)


# -- the call -----------------------------------------------------------------------------


@dataclass
class CallUtterance:
    """Timing of one thing the caller said (monotonic seconds, ~5 ms resolution).

    ``onset``/``end`` are the true speech onset and end in the audio sent: the first
    and last audible 5 ms block, placed at its real-time position within its frame.
    """

    sent_at: float
    onset: float | None = None
    end: float | None = None
    done: float | None = None  # last frame of the utterance sent


@dataclass
class CarrierEvents:
    """What the bot sent back, with monotonic arrival times."""

    #: (arrival, seconds of bot audio queued in the player right after it).
    media: list[tuple[float, float]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    #: Messages that are not Twilio's protocol, or name another stream.
    unexpected: list[str] = field(default_factory=list)


class FakeTwilioCall:
    """One phone call as Twilio would place it on the bot's media socket."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        jitter_secs: float = 0.0,
    ) -> None:
        """Create the call.

        Args:
            url: The bot's ``ws://…/telephony/twilio``.
            headers: Extra handshake headers (access tests).
            jitter_secs: Delay before the player starts audio that finds it idle.

        """
        self.url = url
        self.headers = headers or {}
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.account_sid = "AC" + uuid.uuid4().hex
        self.player = PlaybackModel(LINE_RATE, jitter_secs)
        self.events = CarrierEvents()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._ws: Any = None
        self._mic: asyncio.Queue[tuple[np.ndarray, CallUtterance, asyncio.Future]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._changed = asyncio.Event()
        self._chunk = 0
        self._started = 0.0

    async def __aenter__(self) -> FakeTwilioCall:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- the protocol -------------------------------------------------------------------

    async def connect(self, send_start: bool = True) -> None:
        """Open the socket, send ``connected`` and ``start``, start the mic and player."""
        import websockets

        self._ws = await websockets.connect(
            self.url, max_size=None, open_timeout=10, additional_headers=self.headers
        )
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        if send_start:
            await self.send_start()
        self._tasks = [asyncio.create_task(self._receive(), name="carrier-rx")]
        if send_start:
            self._tasks.append(asyncio.create_task(self._microphone(), name="carrier-mic"))

    async def send_start(self) -> None:
        """Twilio's ``start``: which stream and call this is, and the media format."""
        self._started = time.monotonic()
        await self._send(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "accountSid": self.account_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": LINE_RATE,
                        "channels": 1,
                    },
                    "customParameters": {},
                },
            }
        )

    async def hang_up(self, timeout: float = 10.0) -> None:
        """The caller hangs up: ``stop``, then wait for the bot to close the socket."""
        await self._stop_mic()
        await self._send(
            {
                "event": "stop",
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        """Drop the line: the socket closes with no ``stop`` (a lost connection)."""
        await self._stop_mic()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._ws is not None:
            await self._ws.close()

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything (malformed-message tests)."""
        await self._ws.send(data)

    async def _send(self, message: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(message))

    async def _stop_mic(self) -> None:
        for task in [t for t in self._tasks if t.get_name() == "carrier-mic"]:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
            self._tasks.remove(task)

    # -- the caller's microphone --------------------------------------------------------

    async def say(self, pcm16k: np.ndarray) -> CallUtterance:
        """Speak int16 16 kHz audio into the phone at real time; returns when sent."""
        utt, done = self.say_nowait(pcm16k)
        await done
        return utt

    def say_nowait(self, pcm16k: np.ndarray) -> tuple[CallUtterance, asyncio.Future]:
        """Start speaking; returns the utterance record and a future for its end."""
        utt = CallUtterance(sent_at=time.monotonic())
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._mic.put_nowait((to_line_rate(pcm16k), utt, done))
        return utt, done

    async def _microphone(self) -> None:
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        next_at = time.monotonic()
        current: tuple[np.ndarray, CallUtterance, asyncio.Future] | None = None
        pos = 0
        while True:
            if current is None and not self._mic.empty():
                current, pos = self._mic.get_nowait(), 0
            frame = silence
            if current is not None:
                frame = current[0][pos : pos + FRAME_SAMPLES]
                pos += FRAME_SAMPLES
                if len(frame) < FRAME_SAMPLES:
                    frame = np.concatenate([frame, silence[: FRAME_SAMPLES - len(frame)]])
            payload = ulaw_encode(frame)
            now = time.monotonic()
            self._chunk += 1
            await self._send(
                {
                    "event": "media",
                    "sequenceNumber": str(self._chunk + 1),
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(int((now - self._started) * 1000)),
                        "payload": base64.b64encode(payload).decode("ascii"),
                    },
                }
            )
            if current is not None:
                _, utt, done = current
                self._mark_speech(utt, ulaw_decode(payload), now)
                if pos >= len(current[0]):
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

    @staticmethod
    def _mark_speech(utt: CallUtterance, sent: np.ndarray, sent_at: float) -> None:
        """Move the utterance's onset/end to the audible 5 ms blocks of this frame."""
        for start in range(0, len(sent), ONSET_BLOCK):
            if rms(sent[start : start + ONSET_BLOCK]) >= AUDIBLE_RMS:
                if utt.onset is None:
                    utt.onset = sent_at + start / LINE_RATE
                utt.end = sent_at + (start + ONSET_BLOCK) / LINE_RATE

    # -- the line's speaker -------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            async for data in self._ws:
                now = time.monotonic()
                try:
                    message = json.loads(data)
                    event = message.get("event")
                except (ValueError, AttributeError):
                    self.events.unexpected.append(str(data)[:200])
                    continue
                if message.get("streamSid") != self.stream_sid:
                    self.events.unexpected.append(str(data)[:200])
                if event == "media":
                    audio = ulaw_decode(base64.b64decode(message["media"]["payload"]))
                    self.player.feed(audio.tobytes(), now)
                    self.events.media.append((now, self.player.queued_seconds(now)))
                elif event == "clear":
                    self.events.clears.append(now)
                    self.player.flush(now)
                elif event == "mark":
                    self.events.marks.append((now, str(message.get("mark"))))
                else:
                    self.events.unexpected.append(str(data)[:200])
                self._changed.set()
        except Exception:
            pass
        finally:
            self.close_code = getattr(self._ws, "close_code", None)
            self.closed.set()
            self._changed.set()

    # -- waiting ------------------------------------------------------------------------

    async def wait_for(self, predicate: Any, timeout: float) -> Any:
        """Poll ``predicate()`` on every message (and every 20 ms) until truthy."""
        return await wait_until(predicate, timeout, self._changed, self.closed)

    async def wait_bot_audio(self, after: float, timeout: float = 10.0) -> float:
        """When the caller first heard the bot at or after ``after``."""
        return await self.wait_for(lambda: self.player.first_audible_after(after), timeout)
