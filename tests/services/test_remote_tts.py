"""RemoteTTSService against the real TTS server on loopback (Piper engine, nothing mocked)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData, TTSUsageMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from services.service_helpers import InterruptAfterAudio, audio_bytes_by_context, audio_frames
from serving.tts_harness import PIPER, ServerThread, open_client, settings_for

from pipecat_vibevoice.services import RemoteTTSService
from pipecat_vibevoice.serving.app import create_app

TOKEN = TextAggregationMode.TOKEN
LONG = " ".join(
    [
        "The first lighthouse keeper wrote in his log every single evening.",
        "He noted the wind, the height of the waves and the ships that passed.",
        "Some nights the fog was so thick that the lamp could barely be seen.",
    ]
    * 4
)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(port: int | None = None, **overrides: Any) -> ServerThread:
        app = create_app(settings_for(tmp_path / str(len(started)), **overrides), PIPER)
        srv = ServerThread(app)
        if port is not None:  # the same address again (a restarted server)
            srv.sock.close()
            srv.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.sock.bind(("127.0.0.1", port))
            srv.port = port
            srv.thread = threading.Thread(
                target=srv.server.run, kwargs={"sockets": [srv.sock]}, daemon=True
            )
        started.append(srv.start())
        return srv

    for sub in range(8):
        (tmp_path / str(sub)).mkdir()
    yield make
    for srv in started:
        srv.stop()


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/tts/stream"


def errors(up: list) -> list[ErrorFrame]:
    return [f for f in up if isinstance(f, ErrorFrame)]


def words(down: list) -> list[str]:
    return [f.text for f in down if isinstance(f, TTSTextFrame)]


async def outcomes(srv: ServerThread) -> list[str]:
    assert await srv.serving_state.store.flush()
    with sqlite3.connect(srv.serving_state.settings.store_url) as db:
        return [row[0] for row in db.execute("SELECT outcome FROM syntheses ORDER BY created_at")]


def turn(tokens: list[str]) -> list:
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in tokens),
        LLMFullResponseEndFrame(),
    ]


async def test_sentence_mode_audio_words_and_metrics_over_one_socket(make_server) -> None:
    srv = make_server()
    tts = RemoteTTSService(srv.url)
    down, up = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame("Hello there, friend."), TTSSpeakFrame("How are you today?")],
        pipeline_params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        start_timeout=10,
    )
    assert not errors(up)
    by_context = audio_bytes_by_context(down)
    assert len(by_context) == 2 and all(n > 24000 for n in by_context.values())
    audio = audio_frames(down)
    assert {f.sample_rate for f in audio} == {24000}
    assert {len(f.audio) for f in audio[:-1]} >= {3840}
    # The server's words, timed word by word, each after the audio it starts in.
    assert words(down) == "Hello there, friend. How are you today?".split()
    first_audio = next(i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame))
    texts = [f for f in down if isinstance(f, TTSTextFrame)]
    assert all(down.index(f) > first_audio for f in texts) and all(f.pts for f in texts)
    data = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    assert len([d for d in data if isinstance(d, TTFBMetricsData) and d.value > 0]) == 2
    usage = [d.value for d in data if isinstance(d, TTSUsageMetricsData) and d.value]
    assert sorted(usage) == sorted([len("Hello there, friend."), len("How are you today?")])
    # Both utterances went over one websocket: the server saw one session.
    assert tts.server_info["engine"] == "piper"
    assert await outcomes(srv) == ["ok", "ok"]


async def test_token_mode_is_one_utterance_per_turn(make_server) -> None:
    srv = make_server()
    tts = RemoteTTSService(srv.url, text_aggregation_mode=TOKEN)
    first = ["Hello", " there", ",", " friend", ".", " How", " are", " you", "?"]
    second = ["I", " am", " fine", ",", " thanks", "."]
    down, up = await run_test(
        tts, frames_to_send=turn(first) + [SleepFrame(sleep=0.5)] + turn(second), start_timeout=10
    )
    assert not errors(up)
    assert len(audio_bytes_by_context(down)) == 2
    assert words(down) == "Hello there, friend. How are you? I am fine, thanks.".split()
    assert len([f for f in down if isinstance(f, TTSStoppedFrame)]) == 2
    assert await outcomes(srv) == ["ok", "ok"]  # one server item per turn
    assert not tts._turns and not tts._items


@pytest.mark.parametrize("mode", [None, TOKEN])
async def test_interruption_cancels_the_server_utterance(make_server, mode) -> None:
    srv = make_server()
    tts = RemoteTTSService(srv.url, text_aggregation_mode=mode)
    interrupter = InterruptAfterAudio(tts)
    speak = (
        [TTSSpeakFrame(LONG)]
        if mode is None
        else turn(LONG.split(" ")[:1] + [" " + w for w in LONG.split(" ")[1:]])
    )
    down, up = await run_test(
        tts,
        frames_to_send=[*speak, SleepFrame(sleep=1.5), TTSSpeakFrame("Sorry, go ahead.")],
        observers=[interrupter],
        start_timeout=10,
    )
    assert interrupter.sent_at is not None
    assert not errors(up)
    by_context = audio_bytes_by_context(down)
    assert len(by_context) == 2
    long_audio_s = list(by_context.values())[0] / 48000
    assert long_audio_s < 5.0, f"{long_audio_s:.1f}s of the interrupted utterance came through"
    assert await outcomes(srv) == ["cancelled", "ok"]


async def test_error_event_becomes_an_error_frame_and_the_next_utterance_works(
    make_server,
) -> None:
    srv = make_server()
    tts = RemoteTTSService(srv.url)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=RemoteTTSService.Settings(voice="nobody-at-all")),
            TTSSpeakFrame("This voice does not exist."),
            TTSUpdateSettingsFrame(delta=RemoteTTSService.Settings(voice=None)),
            TTSSpeakFrame("Back to the default voice."),
        ],
        start_timeout=10,
    )
    errs = errors(up)
    assert len(errs) == 1 and "unknown_voice" in errs[0].error, [e.error for e in errs]
    assert not errs[0].fatal
    assert len(audio_bytes_by_context(down)) == 1
    # (The base reports the refused sentence's text as one frame, as for any service.)
    assert words(down)[-5:] == "Back to the default voice.".split()


async def test_out_of_range_setting_is_refused_here(make_server) -> None:
    srv = make_server()
    tts = RemoteTTSService(srv.url)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSUpdateSettingsFrame(delta=RemoteTTSService.Settings(speed=9.0)),
            TTSSpeakFrame("Still at the old speed."),
        ],
        start_timeout=10,
    )
    assert len(errors(up)) == 1 and "speed" in errors(up)[0].error
    assert tts._settings.speed == 1.0 and audio_frames(down)


async def test_fails_over_to_the_next_url(make_server) -> None:
    full = make_server(max_connections=1)
    spare = make_server()
    holder = await open_client(full.url)  # takes the only connection of `full`
    tts = RemoteTTSService([dead_url(), full.url, spare.url], backoff_base_s=0.05)
    try:
        down, up = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hello from the spare.")])
    finally:
        await holder.ws.close()
    assert not errors(up) and audio_frames(down)
    assert tts.connected_url is None  # closed at the end
    assert await outcomes(spare) == ["ok"]


async def test_every_url_down_is_an_error_frame() -> None:
    tts = RemoteTTSService([dead_url(), dead_url()], connect_rounds=2, backoff_base_s=0.05)
    down, up = await run_test(tts, frames_to_send=[TTSSpeakFrame("Nobody hears this.")])
    assert not audio_frames(down)
    errs = errors(up)
    assert errs and "unreachable" in errs[0].error and not errs[0].fatal


async def test_reconnects_after_the_server_restarts(make_server) -> None:
    srv = make_server()
    restarted: list[ServerThread] = []

    class RestartAfterFirstUtterance(BaseObserver):
        def __init__(self) -> None:
            super().__init__()
            self.thread: threading.Thread | None = None

        async def on_push_frame(self, data: FramePushed) -> None:
            if isinstance(data.frame, TTSStoppedFrame) and self.thread is None:

                def restart() -> None:
                    srv.stop()
                    srv.sock.close()
                    restarted.append(make_server(port=srv.port))

                self.thread = threading.Thread(target=restart)
                self.thread.start()

    tts = RemoteTTSService(srv.url, connect_rounds=6, backoff_base_s=0.2)
    down, up = await run_test(
        tts,
        frames_to_send=[
            TTSSpeakFrame("Before the restart."),
            SleepFrame(sleep=6.0),
            TTSSpeakFrame("After the restart."),
        ],
        observers=[RestartAfterFirstUtterance()],
        start_timeout=10,
    )
    assert restarted, "the server was not restarted"
    assert not errors(up), [e.error for e in errors(up)]
    assert len(audio_bytes_by_context(down)) == 2
    assert await outcomes(restarted[0]) == ["ok"]


async def test_token_is_required_and_sent_as_bearer(make_server) -> None:
    srv = make_server(token="s3cret")
    without = RemoteTTSService(srv.url, connect_rounds=1)
    down, up = await run_test(without, frames_to_send=[TTSSpeakFrame("Let me in.")])
    assert not audio_frames(down)
    assert errors(up) and "unauthorized" in errors(up)[0].error
    with_token = RemoteTTSService(srv.url, token="s3cret")
    down, up = await run_test(with_token, frames_to_send=[TTSSpeakFrame("Let me in.")])
    assert not errors(up) and audio_frames(down)


async def test_probe_reports_reachability(make_server) -> None:
    from pipecat_vibevoice.services.remote import probe_remote_tts

    srv = make_server()
    gone = dead_url()
    report = await probe_remote_tts(f"{gone}, {srv.url}")
    assert report["reachable"] is True
    assert [s["reachable"] for s in report["servers"]] == [False, True]
    assert report["servers"][1]["engine"] == "piper"
    started = time.monotonic()
    report = await probe_remote_tts([gone], timeout=1.0)
    assert report["reachable"] is False and time.monotonic() - started < 5
    await asyncio.sleep(0)


class CuttableRelay:
    """A loopback TCP relay in front of a TTS server, cut at will like a dying pool replica.

    ``cut(to_port)`` aborts every relayed connection at once (no close frame, the way
    Serve's proxy drops a socket whose replica died) and sends new connections to
    another server, as a pool routes them to a live replica.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> CuttableRelay:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/tts/stream"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self, to_port: int) -> None:
        self.target = to_port
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_server_dying_mid_utterance_is_an_error_frame_and_the_next_goes_elsewhere(
    make_server,
) -> None:
    """Never silence: the cut utterance ends in an ErrorFrame; it is not spoken twice."""
    first, second = make_server(), make_server()
    relay = await CuttableRelay(first.port).start()
    cut_at: list[int] = []

    class CutAtFirstAudio(BaseObserver):
        async def on_push_frame(self, data: FramePushed) -> None:
            if isinstance(data.frame, TTSAudioRawFrame) and not cut_at:
                cut_at.append(len(data.frame.audio))
                relay.cut(to_port=second.port)

    tts = RemoteTTSService(relay.url, backoff_base_s=0.05)
    try:
        down, up = await run_test(
            tts,
            frames_to_send=[TTSSpeakFrame(LONG), TTSSpeakFrame("After the cut.")],
            observers=[CutAtFirstAudio()],
            start_timeout=10,
        )
    finally:
        await relay.close()
    assert cut_at, "no audio came before the cut"
    errs = errors(up)
    assert len(errs) == 1 and "cut off after" in errs[0].error, [e.error for e in errs]
    assert not errs[0].fatal
    by_context = list(audio_bytes_by_context(down).values())
    assert len(by_context) == 2
    assert by_context[0] < 2 * 24000 * 10  # far less than the long text's audio
    assert by_context[1] > 2 * 24000 * 0.5  # "After the cut." in full
    # The first server saw its client vanish; the second spoke only the next utterance.
    assert await outcomes(first) == ["disconnected"]
    assert await outcomes(second) == ["ok"]
