"""Hypothesis over the voice bot's ``WS /ws``: garbage bytes, text messages, audio frames
with wrong sample rates, channel counts or odd lengths. The bot never crashes and
answers each bad frame with a clear ``error`` message.

Each example is one connection to the in-process bot: the generated frame, then a
*sentinel* (a text message, which the bot must refuse). The bot's input path has two
queues (audio is checked by the speech gate, everything else by the serializer), so
errors are matched by content rather than by order.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability.harness import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SENTINEL = "sentinel: text is not a frame"


def _pb():
    from pipecat.frames.protobufs import frames_pb2

    return frames_pb2


def audio_frame(audio: bytes, rate: int, channels: int) -> bytes:
    frame = _pb().Frame()
    frame.audio.audio = audio
    frame.audio.sample_rate = rate
    frame.audio.num_channels = channels
    return frame.SerializeToString()


def _expected_for_bytes(data: bytes) -> str | None:
    """What the error must mention for raw ``data`` (None: it may be a valid frame)."""
    if not data:
        return None  # an empty message carries nothing to refuse (it may be dropped)
    try:
        frame = _pb().Frame.FromString(data)
    except Exception:
        return "malformed protobuf"
    kind = frame.WhichOneof("frame")
    if kind is None:
        return "protobuf"  # empty or unknown frame
    if kind == "audio":
        return _expected_for_audio(len(frame.audio.audio), frame.audio.sample_rate,
                                   frame.audio.num_channels)  # fmt: skip
    if kind in ("text", "transcription"):
        return "not supported"
    return None


def _expected_for_audio(size: int, rate: int, channels: int) -> str | None:
    if channels == 0:
        return ""  # any clear error (the frame cannot be decoded)
    if size % 2:
        return "even byte count"
    if size == 0:
        return None  # no audio at all: nothing to refuse (it may be dropped quietly)
    if rate != 16000 or channels != 1:
        return "16000 Hz"
    return None


def _text_frame(text: str) -> bytes:
    frame = _pb().Frame()
    frame.text.text = text
    return frame.SerializeToString()


cases = st.one_of(
    st.binary(max_size=4096).map(lambda b: (b, _expected_for_bytes(b))),
    st.builds(
        lambda audio, rate, channels: (
            audio_frame(audio, rate, channels),
            _expected_for_audio(len(audio), rate, channels),
        ),
        st.binary(max_size=3200),
        st.one_of(
            st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]), st.integers(0, 400_000)
        ),  # fmt: skip
        st.one_of(st.just(1), st.integers(0, 8)),
    ),
    st.text(max_size=300).map(lambda t: (t, "text messages are not supported" if t else None)),
    st.text(max_size=100).map(lambda t: (_text_frame(t), "not supported")),
)


def _error_of(data: bytes | str) -> str | None:
    if isinstance(data, str):
        return None
    frame = _pb().Frame.FromString(data)
    if frame.WhichOneof("frame") != "message":
        return None
    message = json.loads(frame.message.data)
    if message.get("type") != "error":
        return None
    payload = message.get("data") or {}
    return str(payload.get("error") or payload.get("message") or "")


async def _exchange(url: str, frame: bytes | str, expected: str | None) -> list[str]:
    """Send ``frame`` and the sentinel; return the error texts received."""
    errors: list[str] = []
    async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
        await ws.send(frame)
        await ws.send(SENTINEL)
        deadline = time.monotonic() + 5
        settle: float | None = None
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(ws.recv(), 0.1)
            except TimeoutError:
                data = None
            error = _error_of(data) if data is not None else None
            if error is not None:
                assert error.strip(), "an error message without text"
                errors.append(error)
            got_sentinel = any("text messages are not supported" in e for e in errors)
            if got_sentinel and settle is None:
                settle = time.monotonic() + (0.4 if expected is None else 0.0)
            wanted = expected is None or len(errors) >= 2  # the frame's error and the sentinel's
            if settle is not None and time.monotonic() >= settle and wanted:
                break
    return errors


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases)
def test_fuzzed_ws_frames_get_clear_errors_and_the_bot_lives(bot_server, case) -> None:
    server, _engine, _backend = bot_server
    frame, expected = case
    failed_before = server.app.state.sessions.failed
    url = f"ws://127.0.0.1:{server.port}/ws"
    errors = asyncio.run(_exchange(url, frame, expected))
    assert any("text messages are not supported" in e for e in errors), errors
    if expected is not None:
        # Two errors (the frame's and the sentinel's), the frame's saying what was wrong.
        assert len(errors) >= 2, (repr(frame)[:80], expected, errors)
        assert any(expected in e for e in errors), (repr(frame)[:80], expected, errors)
    assert server.app.state.sessions.failed == failed_before, "a session failed"
    assert server.thread.is_alive()


def test_after_the_fuzz_no_session_is_left_and_health_is_ok(bot_server) -> None:
    server, _engine, _backend = bot_server
    assert asyncio.run(wait_until(lambda: not server.app.state.sessions.live, timeout=15))
    import urllib.request

    with urllib.request.urlopen(f"{server.http}/health", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "ok" and body["sessions"]["active"] == 0
    assert body["sessions"]["failed"] == 0
