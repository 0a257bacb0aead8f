"""Phone calls through Twilio Media Streams (``/telephony/twilio``), on loopback.

No account and no network: :mod:`.fake_twilio` plays Twilio — ``connected``, ``start``,
20 ms of 8 kHz μ-law ``media`` at real time carrying the test user's Piper speech,
``stop`` — against a real ``bot.py`` (the ``bot_server`` fixture), and plays the bot's
answer at real time, dropping its buffer on ``clear`` as Twilio does. The unit tests
above the call tests need no server: the codec, the hardened serializer, the TwiML,
the settings, and the admission rules on a bare app with no models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
)
from starlette.requests import Request

from pipecat_vibevoice.bot import ServerSettings, build_parser
from pipecat_vibevoice.bot.session import SessionInfo, SessionRegistry
from pipecat_vibevoice.bot.telephony import (
    TWILIO_PATH,
    CallStart,
    LineResampler,
    SafeTwilioSerializer,
    stream_url,
    telephony_router,
    twiml_connect,
)
from pipecat_vibevoice.web_access import AccessPolicy

from .conftest import free_port
from .fake_twilio import (
    FRAME_SAMPLES,
    FakeTwilioCall,
    to_line_rate,
    ulaw_decode,
    ulaw_encode,
)

START = CallStart("MZ" + "0" * 32, "CA" + "1" * 32, "AC" + "2" * 32)

# -- the G.711 codec of the fake carrier -----------------------------------------------------


def test_ulaw_codec_is_g711():
    codes = bytes(range(256))
    decoded = ulaw_decode(codes)
    assert decoded[0xFF] == 0 and decoded[0x7F] == 0  # the two zeros
    assert decoded.max() == 32124 and decoded.min() == -32124
    assert ulaw_encode(decoded) == bytes(c if c != 0x7F else 0xFF for c in codes)
    ramp = np.linspace(-32768, 32767, 20001).astype(np.int16)
    back = ulaw_decode(ulaw_encode(ramp)).astype(np.int32)
    # Segmented: the step grows with the level, ~3 % of it at most.
    assert np.all(np.abs(back - ramp) <= np.maximum(8, np.abs(ramp.astype(np.int32)) // 30 + 132))
    try:
        import audioop  # gone in 3.13; where it is there, it is the reference
    except ImportError:
        return
    assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    ours, ref = ulaw_encode(ramp), audioop.lin2ulaw(ramp.tobytes(), 2)
    positive = ramp >= 0
    assert bytes(np.frombuffer(ours, np.uint8)[positive]) == bytes(
        np.frombuffer(ref, np.uint8)[positive]
    )
    # audioop quantizes negative samples on a 14-bit grid (floor, not truncation): its
    # thresholds sit up to 3 LSB off, so a code may be its neighbour there, never more.
    apart = np.abs(np.frombuffer(ours, np.uint8).astype(int) - np.frombuffer(ref, np.uint8))
    assert apart.max() <= 1


def test_line_rate_keeps_the_voice_band():
    t = np.arange(16000) / 16000
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    alias = (8000 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)
    assert to_line_rate(tone)[100:-100].std() > 5000  # 1 kHz passes
    assert to_line_rate(alias)[100:-100].std() < 100  # 6 kHz would alias to 2 kHz: gone


# -- the line's resampler --------------------------------------------------------------------


def _tone(hz: float, rate: int, seconds: float = 0.48, level: float = 8000) -> np.ndarray:
    return (level * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.int16)


async def _stream(resampler: LineResampler, pcm: np.ndarray, chunk: int, rates) -> list[bytes]:
    return [
        await resampler.resample(pcm[i : i + chunk].tobytes(), *rates)
        for i in range(0, len(pcm), chunk)
    ]


def _level_db(pcm: np.ndarray, hz: float, rate: int) -> float:
    """Level of the ``hz`` component, dB re full scale (steady part only)."""
    x = pcm[len(pcm) // 4 :].astype(np.float64)
    t = np.arange(len(x)) / rate
    amp = 2 * abs(np.mean(x * np.exp(-2j * np.pi * hz * t)))
    return 20 * np.log10(max(amp, 1e-9) / 32768)


@pytest.mark.parametrize(("rates", "chunk"), [((8000, 16000), FRAME_SAMPLES), ((24000, 8000), 960)])
async def test_line_resampler_answers_every_piece_at_once_and_keeps_the_band(rates, chunk):
    resampler = LineResampler()
    pieces = await _stream(resampler, _tone(1000, rates[0]), chunk, rates)
    share = 2 * chunk * rates[1] // rates[0]
    assert all(len(p) == share for p in pieces)  # no bursts, nothing held back
    assert resampler.delay_s <= 0.004
    out = np.frombuffer(b"".join(pieces), np.int16)
    assert _level_db(out, 1000, rates[1]) == pytest.approx(20 * np.log10(8000 / 32768), abs=0.2)
    # What must not come out: the 8 kHz line's image at 7 kHz, or 6 kHz folded to 2 kHz.
    unwanted = (7000, 1000) if rates[1] > rates[0] else (2000, 6000)
    probe = _tone(unwanted[1], rates[0])
    out = np.frombuffer(b"".join(await _stream(LineResampler(), probe, chunk, rates)), np.int16)
    assert _level_db(out, unwanted[0], rates[1]) < 20 * np.log10(8000 / 32768) - 55


async def test_line_resampler_reset_forgets_and_flush_empties_the_filter():
    resampler = LineResampler()
    await resampler.resample(_tone(1000, 24000, 0.04).tobytes(), 24000, 8000)
    tail = await resampler.flush()
    assert tail and np.abs(np.frombuffer(tail, np.int16)).max() > 100
    await resampler.resample(_tone(1000, 24000, 0.04).tobytes(), 24000, 8000)
    await resampler.reset()
    silent = await resampler.resample(bytes(1920), 24000, 8000)
    assert np.abs(np.frombuffer(silent, np.int16)).max() == 0  # no stale tail
    odd = LineResampler()  # 44.1 kHz is no small ratio: Pipecat's resampler serves it
    assert isinstance(await odd.resample(bytes(882), 44100, 8000), bytes)


# -- the hardened serializer -----------------------------------------------------------------


async def _serializer(**kwargs) -> SafeTwilioSerializer:
    ser = SafeTwilioSerializer(START, **kwargs)
    await ser.setup(SimpleNamespace(audio_in_sample_rate=16000))
    return ser


def _media(payload: str, stream_sid: str = START.stream_sid) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"track": "inbound", "payload": payload},
        }
    )


async def test_serializer_turns_each_media_message_into_16k_pcm_at_once():
    ser = await _serializer()
    # Pipecat keeps its resamplers here; ours must be the ones it uses.
    assert isinstance(ser._input_resampler, LineResampler)
    assert isinstance(ser._output_resampler, LineResampler)
    ulaw = base64.b64encode(ulaw_encode(np.full(FRAME_SAMPLES, 1000, np.int16))).decode()
    frames = [await ser.deserialize(_media(ulaw)) for _ in range(5)]
    assert all(isinstance(f, InputAudioRawFrame) for f in frames)  # no message held back
    assert all(f.sample_rate == 16000 and f.num_channels == 1 for f in frames)
    assert all(len(f.audio) == 2 * 2 * FRAME_SAMPLES for f in frames)
    assert SafeTwilioSerializer(START, resampler="soxr")._input_resampler is not None
    dtmf = json.dumps({"event": "dtmf", "streamSid": START.stream_sid, "dtmf": {"digit": "5"}})
    assert isinstance(await ser.deserialize(dtmf), InputDTMFFrame)
    assert ser.errors == 0


async def test_serializer_ignores_malformed_carrier_messages():
    ser = await _serializer()
    bad = [
        "{not json",
        b"\xff\xfe\x00",
        "[1, 2, 3]",
        '"media"',
        "[" * 5000,
        json.dumps({"event": "party", "streamSid": START.stream_sid}),
        json.dumps({"streamSid": START.stream_sid}),
        _media("***not base64***"),
        _media(""),
        json.dumps({"event": "media", "streamSid": START.stream_sid, "media": "x"}),
        _media(base64.b64encode(b"\xff" * 160).decode(), stream_sid="MZ-another"),
        json.dumps({"event": "dtmf", "streamSid": START.stream_sid, "dtmf": "5"}),
    ]
    for message in bad:
        assert await ser.deserialize(message) is None, message
    assert ser.errors == len(bad)
    # Known events that need nothing, and the outbound track, are not errors.
    for event in ("connected", "mark", "start"):
        assert await ser.deserialize(json.dumps({"event": event})) is None
    outbound = {"event": "media", "media": {"track": "outbound", "payload": "/w=="}}
    assert await ser.deserialize(json.dumps(outbound)) is None
    assert ser.errors == len(bad)
    assert not ser.ended_by_carrier


async def test_stop_tells_the_session_once_and_skips_the_hang_up():
    stops: list[float] = []
    ser = await _serializer(auth_token="secret", on_stop=lambda: stops.append(time.monotonic()))
    assert ser.auto_hang_up
    stop = json.dumps({"event": "stop", "streamSid": START.stream_sid, "stop": {}})
    assert await ser.deserialize(stop) is None
    assert await ser.deserialize(stop) is None
    assert len(stops) == 1 and ser.ended_by_carrier
    # The carrier ended the call: no REST hang-up (this would reach the network).
    assert await ser.serialize(EndFrame()) is None
    assert await ser.serialize(CancelFrame()) is None


async def test_auto_hang_up_only_with_credentials():
    assert not (await _serializer()).auto_hang_up
    assert not SafeTwilioSerializer(CallStart("MZ1"), auth_token="secret").auto_hang_up
    assert SafeTwilioSerializer(START, auth_token="t").auto_hang_up  # the call's accountSid
    no_account = CallStart("MZ1", "CA1", "")
    assert not SafeTwilioSerializer(no_account, auth_token="t").auto_hang_up
    assert SafeTwilioSerializer(no_account, account_sid="AC9", auth_token="t").auto_hang_up
    # Without credentials the stock End/Cancel path sends nothing and calls no one.
    ser = await _serializer()
    assert await ser.serialize(EndFrame()) is None


async def test_serializer_sends_media_and_clear_and_nothing_else():
    ser = await _serializer()
    tone = (8000 * np.sin(np.arange(960 * 5) / 5)).astype(np.int16).tobytes()
    sent = [  # five 40 ms chunks at 24 kHz
        await ser.serialize(
            OutputAudioRawFrame(audio=tone[i : i + 1920], sample_rate=24000, num_channels=1)
        )
        for i in range(0, len(tone), 1920)
    ]
    media = [json.loads(s) for s in sent if s]
    assert media and all(m["event"] == "media" for m in media)
    assert all(m["streamSid"] == START.stream_sid for m in media)
    assert len(media) == 5  # one message per chunk, none held back
    assert sum(len(base64.b64decode(m["media"]["payload"])) for m in media) == 1600
    clear = json.loads(await ser.serialize(InterruptionFrame()))
    assert clear == {"event": "clear", "streamSid": START.stream_sid}
    ours = OutputTransportMessageUrgentFrame(message={"type": "server-message", "data": {}})
    assert await ser.serialize(ours) is None
    mark = OutputTransportMessageUrgentFrame(
        message={"event": "mark", "streamSid": START.stream_sid, "mark": {"name": "x"}}
    )
    assert json.loads(await ser.serialize(mark))["event"] == "mark"


def test_call_start_reads_twilios_start_message():
    message = {
        "event": "start",
        "streamSid": "MZa",
        "start": {
            "streamSid": "MZa",
            "callSid": "CAb",
            "accountSid": "ACc",
            "customParameters": {"k": "v"},
        },
    }
    assert CallStart.from_message(message) == CallStart("MZa", "CAb", "ACc", {"k": "v"})
    assert CallStart.from_message({"event": "start", "start": {"callSid": 3}}) is None
    assert CallStart.from_message({"event": "start", "streamSid": "MZz", "start": 7}) == CallStart(
        "MZz"
    )


# -- the webhook -----------------------------------------------------------------------------


def _request(headers: dict[str, str], scheme: str = "http") -> Request:
    return Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": scheme,
            "path": TWILIO_PATH,
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "server": ("127.0.0.1", 7860),
        }
    )


@pytest.mark.parametrize(
    ("headers", "scheme", "url"),
    [
        ({"Host": "127.0.0.1:7860"}, "http", "ws://127.0.0.1:7860/telephony/twilio"),
        ({"Host": "localhost:7860"}, "http", "ws://localhost:7860/telephony/twilio"),
        ({"Host": "[::1]:7860"}, "http", "ws://[::1]:7860/telephony/twilio"),
        ({"Host": "bot.example.com"}, "http", "wss://bot.example.com/telephony/twilio"),
        ({"Host": "bot.example.com"}, "https", "wss://bot.example.com/telephony/twilio"),
        (
            {"Host": "10.0.0.5:7860", "X-Forwarded-Host": "voice.example.com, proxy.internal"},
            "http",
            "wss://voice.example.com/telephony/twilio",
        ),
        (
            {
                "Host": "127.0.0.1:7860",
                "X-Forwarded-Host": "abc.ngrok.app",
                "X-Forwarded-Proto": "https",
            },
            "http",
            "wss://abc.ngrok.app/telephony/twilio",
        ),
        (
            {"Host": "bot.example.com", "X-Forwarded-Proto": "http"},
            "https",
            "ws://bot.example.com/telephony/twilio",
        ),
    ],
)
def test_stream_url_follows_the_request_and_its_proxy(headers, scheme, url):
    assert stream_url(_request(headers, scheme)) == url


def test_stream_url_refuses_a_host_that_is_not_one():
    assert stream_url(_request({"Host": 'evil"/><Hangup/><x a="'})) is None
    assert stream_url(_request({"Host": "ok.example", "X-Forwarded-Host": "a b"})) is None


def test_twiml_connects_the_call_to_the_socket():
    import xml.etree.ElementTree as ET

    root = ET.fromstring(twiml_connect("wss://bot.example.com/telephony/twilio"))
    stream = root.find("./Connect/Stream")
    assert root.tag == "Response" and stream is not None
    assert stream.get("url") == "wss://bot.example.com/telephony/twilio"


# -- settings --------------------------------------------------------------------------------


def test_twilio_credentials_come_from_the_environment_only():
    flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings}
    assert "--twilio-account-sid" in flags and "--twilio-auth-token" not in flags
    settings = ServerSettings.from_env(
        {
            "PIPECAT_VIBEVOICE_TWILIO_ACCOUNT_SID": "AC123",
            "PIPECAT_VIBEVOICE_TWILIO_AUTH_TOKEN": "s3cret",
        }
    )
    assert settings.twilio_account_sid == "AC123" and settings.twilio_auth_token == "s3cret"
    assert "s3cret" not in repr(settings)
    assert ServerSettings.from_env({}).twilio_auth_token == ""


# -- admission, on a bare app with no models -------------------------------------------------


class _BareApp:
    """The telephony router alone, served by uvicorn in this loop; no models are loaded."""

    def __init__(self, **settings) -> None:
        self.app = FastAPI()
        self.app.include_router(telephony_router())
        self.settings = ServerSettings(**settings)
        state = self.app.state
        state.settings, state.models, state.tts_factory = self.settings, None, None
        state.sessions = SessionRegistry()
        state.access = AccessPolicy.from_settings(
            self.settings.allowed_origins, self.settings.serving.token, environ={}
        )
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )

    @property
    def registry(self) -> SessionRegistry:
        return self.app.state.sessions

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{TWILIO_PATH}"

    async def __aenter__(self) -> _BareApp:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.should_exit = True
        await self.task


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_calls_follow_the_access_rule_and_the_session_limit():
    async with _BareApp(max_sessions=1, serving=_serving(token="")) as bare:
        # A browser page of another site may not place a call.
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await FakeTwilioCall(bare.url, headers={"Origin": "https://evil.example"}).connect()
        # A full server refuses calls like any other session: "try again later" (1013).
        bare.registry.live["web"] = SessionInfo("web", "someone at /ws")
        async with websockets.connect(bare.url) as refused:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(refused.recv(), 5)
        assert closed.value.rcvd.code == 1013
        # ... and the call's webhook tells the caller so instead of connecting it.
        webhook = urllib.request.Request(
            f"http://127.0.0.1:{bare.port}{TWILIO_PATH}", data=b"", method="POST"
        )
        reply = await asyncio.to_thread(lambda: urllib.request.urlopen(webhook).read().decode())
        assert "<Say>" in reply and "<Hangup/>" in reply and "<Stream" not in reply
        del bare.registry.live["web"]
        assert bare.registry.total == 0
    async with _BareApp(serving=_serving(token="tok")) as bare:
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await FakeTwilioCall(bare.url).connect()
        call = FakeTwilioCall(bare.url, headers={"Authorization": "Bearer tok"})
        await call.connect(send_start=False)  # admitted; hangs up before 'start'
        await call.hang_up()
        await _until(lambda: not bare.registry.live)
        assert bare.registry.total == 1 and bare.registry.failed == 0


@pytest.mark.timeout(60)
async def test_a_call_that_never_starts_is_closed_and_a_failure_is_counted():
    async with _BareApp() as bare:
        call = FakeTwilioCall(bare.url)
        await call.connect(send_start=False)
        for junk in ("{bad", json.dumps({"event": "media"}), json.dumps({"event": "start"})):
            await call.send_raw(junk)  # logged and skipped while waiting for 'start'
        await call.send_start()
        # No models on this app: the pipeline cannot be built; the call is closed with
        # 1011, counted as failed, and gone from the registry.
        await asyncio.wait_for(call.closed.wait(), 10)
        assert call.close_code == 1011
        await _until(lambda: not bare.registry.live)
        assert bare.registry.failed == 1


def _serving(**kwargs):
    from pipecat_vibevoice.serving.settings import ServingSettings

    return ServingSettings(**kwargs)


# -- real calls against bot.py ---------------------------------------------------------------

#: What the caller's line may hold of the bot's voice. The output goes at real time: two
#: 40 ms chunks, plus 60 ms for this process's own scheduling, as for any plain client
#: (tests/bot/test_barge_in_any_client.py holds the transport to that). Here only "never
#: much more": a late chunk on 2 shared cores lets the line hold a chunk or two extra,
#: while a sender ahead of real time would fill it with seconds.
MAX_QUEUED_S = 0.25


def _call_url(server) -> str:
    return f"ws://127.0.0.1:{server.port}{TWILIO_PATH}"


async def _active(server, count: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = await asyncio.to_thread(server.health)
        if health["sessions"]["active"] == count or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.1)


def _bad_messages(stream_sid: str) -> list[str | bytes]:
    return [
        "{this is not json",
        json.dumps({"event": "hologram", "streamSid": stream_sid}),
        json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": "@@@=="}}),
        json.dumps([{"event": "media"}]),
        b"\x00\xffbinary garbage",
    ]


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_phone_call_is_answered_barged_in_on_and_hung_up(bot_server, speech):
    async with FakeTwilioCall(_call_url(bot_server)) as call:
        health = await _active(bot_server, 1)
        assert health["sessions"]["active"] == 1, "the call is not a live session"
        await asyncio.sleep(0.5)

        asked = await call.say(speech["question"])
        # Garbage from the carrier mid-call: logged, ignored, the call goes on.
        for junk in _bad_messages(call.stream_sid):
            await call.send_raw(junk)
        answer = await call.wait_bot_audio(asked.end, timeout=20)
        assert answer >= asked.end
        await asyncio.sleep(1.0)
        await call.wait_for(lambda: call.player.is_audible(time.monotonic()), timeout=5)
        answer_started = min(t for t, _ in call.events.media if t >= asked.end)
        before_barge = time.monotonic()

        barge, done = call.say_nowait(speech["barge"])
        await done
        await call.wait_for(lambda: [t for t in call.events.clears if t > before_barge], 10)
        clear = next(t for t in call.events.clears if t > before_barge)
        assert barge.onset is not None and clear > barge.onset

        # Paced at real time: the line never held much.
        queued = [q for t, q in call.events.media if answer_started <= t < clear]
        assert queued, "no bot audio before the barge-in"
        assert max(queued) <= MAX_QUEUED_S, f"the line held {max(queued):.2f}s of audio"
        # Held at the onset: the caller stopped hearing the bot before the clear came.
        quiet = call.player.last_audible_between(barge.onset - 0.1, clear)
        assert quiet is not None, "the bot was not audible when the caller barged in"
        assert quiet < clear - 0.02, "the line went quiet only when the clear came"

        # The barge-in is answered too: the call is alive after the garbage.
        reply = await call.wait_bot_audio(barge.end, timeout=20)
        assert reply >= barge.end
        assert call.events.unexpected == [], call.events.unexpected[:3]

        # The caller hangs up: the bot closes the stream and the session is gone.
        await call.hang_up()
    health = await _active(bot_server, 0)
    assert health["sessions"]["active"] == 0
    log = bot_server.log()
    assert "ignored a bad carrier message" in log
    assert "the carrier sent 'stop'" in log


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_dropped_line_ends_the_call_and_the_webhook_answers_twiml(bot_server):
    request = urllib.request.Request(
        bot_server.http + TWILIO_PATH,
        data=b"CallSid=CA1&From=%2B15550100&To=%2B15550199",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.headers["content-type"].startswith("application/xml")
        body = resp.read().decode()
    assert f'<Stream url="ws://127.0.0.1:{bot_server.port}{TWILIO_PATH}"/>' in body

    call = FakeTwilioCall(_call_url(bot_server))
    await call.connect()
    assert (await _active(bot_server, 1))["sessions"]["active"] == 1
    await asyncio.sleep(0.5)
    await call.close()  # no 'stop': the connection is simply lost
    assert (await _active(bot_server, 0))["sessions"]["active"] == 0
