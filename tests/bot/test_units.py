"""Fast tests of the bot's parts: turn judge, responder, player model, serializer, gate."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    OutputTransportMessageUrgentFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

from pipecat_vibevoice.bot.serializer import MAX_REPORTED_ERRORS, SafeProtobufSerializer
from pipecat_vibevoice.bot.settings import build_parser, settings_from_args
from pipecat_vibevoice.clients.voice_client import PlaybackModel
from pipecat_vibevoice.pipeline import BotConfig, BotConfigError, reply_to
from pipecat_vibevoice.pipeline.frames import (
    ClientProtocolErrorFrame,
    PlaybackControlFrame,
    ProbableSpeechEndFrame,
    SpeechOnsetFrame,
    message_kind,
)
from pipecat_vibevoice.pipeline.responder import last_user_text
from pipecat_vibevoice.pipeline.transcriber import Transcriber, looks_looped, loop_start
from pipecat_vibevoice.pipeline.turns import text_sounds_finished


@pytest.mark.parametrize(
    ("text", "finished"),
    [
        ("What time is it in Paris right now?", True),
        ("I would like to order a large pizza with.", False),
        ("I would like to order a large pizza with", False),
        ("Tell me about the weather in", False),
        ("So, um", False),
        ("extra cheese and olives, please.", True),
        ("I think that...", False),
        ("", False),
    ],
)
def test_turn_judge_on_transcripts(text, finished):
    assert text_sounds_finished(text) is finished


def test_offline_responder_answers_from_what_it_heard():
    assert "heard you say: tell me a story" in reply_to("Tell me a story.").lower()
    assert "not a language model" in reply_to("Tell me a story.")
    assert reply_to("hello").startswith("Hello")
    assert reply_to("") == ""
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    assert last_user_text(messages) == "second"


def test_loop_guard_spots_restarted_sentences():
    assert looks_looped("Can you hear me? Can you hear me")
    assert looks_looped("Tell me a story about a dog. Tell me")
    assert not looks_looped("Stop, please. Tell me a story about a brave dog instead.")
    # Only a word-for-word copy to the end is cut; a sentence that merely begins like
    # an earlier one may be what the user said, and gets the full-window redo.
    assert loop_start("Tell me a story about a dog. Tell me") == 7
    assert looks_looped("I want a pizza. I want it large.")
    assert loop_start("I want a pizza. I want it large.") is None


def test_a_repeated_sentence_is_cut_before_the_repeat_at_a_token():
    """The decoder's loop is cut where the sentence restarts, on a token boundary, so the
    last-word confidence is that of the real last word ("formed.")."""
    text = "Please explain how a rainbow is formed. Please explain how a rain"
    assert loop_start(text) == 7
    pieces = [" Please", " explain", " how", " a", " rain", "bow", " is", " formed", ".",
              " Please", " explain", " how", " a", " rain"]  # fmt: skip

    class Tokenizer:
        def decode(self, ids: list[int]) -> str:
            return "".join(pieces[i] for i in ids)

    stub = type("Stub", (), {"_tokenizer": Tokenizer()})()
    kept = [(i, 0.9) for i in range(len(pieces))]
    cut = Transcriber._tokens_for_words(stub, kept, loop_start(text))
    assert (
        Tokenizer().decode([t for t, _ in cut]).strip() == "Please explain how a rainbow is formed."
    )


def _tone(seconds: float, rate: int = 24000, amp: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def test_player_model_pause_resume_flush():
    player = PlaybackModel()
    player.feed(_tone(1.0), now=0.0)
    assert player.is_audible(0.5)
    player.pause(0.5)
    assert not player.is_audible(0.6)
    assert player.queued_seconds(0.6) == pytest.approx(0.5, abs=0.011)
    player.resume(1.0)
    assert player.is_audible(1.2)
    assert player.last_audible_between(1.0, 3.0) == pytest.approx(1.5, abs=0.011)
    player.feed(_tone(1.0), now=2.0)
    player.flush(2.25)
    assert player.last_audible_between(2.0, 4.0) == pytest.approx(2.25, abs=0.011)
    assert player.queued_seconds(2.3) == 0
    assert player.first_audible_after(1.6, now=4.0) == pytest.approx(2.0, abs=0.011)


async def test_serializer_turns_bad_input_into_errors():
    from pipecat.frames.protobufs import frames_pb2

    ser = SafeProtobufSerializer()
    assert isinstance(await ser.deserialize(b"\xff\x00garbage"), ClientProtocolErrorFrame)
    assert isinstance(await ser.deserialize("text"), ClientProtocolErrorFrame)
    odd = frames_pb2.Frame()
    odd.audio.audio = b"\x00\x01\x02"
    odd.audio.sample_rate = 16000
    odd.audio.num_channels = 1
    assert isinstance(await ser.deserialize(odd.SerializeToString()), ClientProtocolErrorFrame)
    good = frames_pb2.Frame()
    good.audio.audio = b"\x00\x00" * 320
    good.audio.sample_rate = 16000
    good.audio.num_channels = 1
    frame = await ser.deserialize(good.SerializeToString())
    assert isinstance(frame, InputAudioRawFrame) and frame.sample_rate == 16000
    stop = frames_pb2.Frame()
    stop.interruption.SetInParent()
    assert isinstance(await ser.deserialize(stop.SerializeToString()), InterruptionFrame)
    for _ in range(MAX_REPORTED_ERRORS):
        await ser.deserialize(b"\xff")
    assert await ser.deserialize(b"\xff") is None  # reported enough: now only logged


def test_config_validation_and_cli():
    with pytest.raises(BotConfigError, match="max_pause_secs"):
        BotConfig(vad_stop_secs=0.5, max_pause_secs=0.3)
    with pytest.raises(BotConfigError, match="llm_url"):
        BotConfig(llm_url="localhost:11434")
    args = build_parser().parse_args(
        [
            "--port",
            "9000",
            "--llm-url",
            "http://127.0.0.1:11434/v1",
            "--llm-model",
            "qwen",
            "--engine",
            "piper",
            "--vad-stop-secs",
            "0.3",
            "--voice",
            "1",
        ]
    )
    settings = settings_from_args(args)
    assert settings.port == 9000 and settings.tts.engine == "piper"
    assert settings.bot.llm_model == "qwen" and not settings.bot.uses_offline_responder
    assert settings.bot.vad_stop_secs == 0.3 and settings.bot.voice == 1
    assert "llm_api_key" in settings.bot.to_dict()
    assert isinstance(args, argparse.Namespace)


def _gate_and_frames(audio: np.ndarray):
    from pipecat_vibevoice.pipeline.models import _pipecat_data_file, load_onnx_session
    from pipecat_vibevoice.pipeline.vad import SharedSileroVADAnalyzer, SpeechGate

    session = load_onnx_session(_pipecat_data_file("pipecat.audio.vad.data", "silero_vad.onnx"))
    frames = [
        InputAudioRawFrame(audio=audio[i : i + 320].tobytes(), sample_rate=16000, num_channels=1)
        for i in range(0, len(audio) - 319, 320)
    ]
    return SpeechGate(SharedSileroVADAnalyzer(session)), frames


@pytest.mark.timeout(60)
async def test_speech_gate_flushes_itself_when_speech_resumes_an_open_turn(speech):
    """Inside an open user turn Pipecat sends no interruption: the gate flushes."""
    from pipecat.frames.frames import UserStartedSpeakingFrame
    from pipecat.tests.utils import run_test

    audio = np.concatenate([np.zeros(8000, np.int16), speech["question"]])
    gate, frames = _gate_and_frames(audio)
    down, _ = await run_test(gate, frames_to_send=[UserStartedSpeakingFrame(), *frames])
    types = [
        message_kind(f.message) for f in down if isinstance(f, OutputTransportMessageUrgentFrame)
    ]
    assert types[:2] == ["playback-pause", "playback-flush"]
    # The output transport is told to drop what it holds (no interruption will come).
    controls = [f.action for f in down if isinstance(f, PlaybackControlFrame)]
    assert controls == ["drop"]  # no hold: the bot was not speaking


@pytest.mark.timeout(60)
async def test_speech_gate_pauses_early_and_announces_speech(speech):
    """Onset (→ pause message) comes before Pipecat's confirmed VAD start."""
    from pipecat.tests.utils import run_test

    from pipecat_vibevoice.pipeline.models import _pipecat_data_file, load_onnx_session
    from pipecat_vibevoice.pipeline.vad import SharedSileroVADAnalyzer, SpeechGate

    session = load_onnx_session(_pipecat_data_file("pipecat.audio.vad.data", "silero_vad.onnx"))
    gate = SpeechGate(SharedSileroVADAnalyzer(session))
    audio = np.concatenate(
        [np.zeros(8000, np.int16), speech["question"], np.zeros(16000, np.int16)]
    )
    frames = [
        InputAudioRawFrame(audio=audio[i : i + 320].tobytes(), sample_rate=16000, num_channels=1)
        for i in range(0, len(audio) - 319, 320)
    ]
    frames.append(InputAudioRawFrame(audio=b"\x00\x00" * 441, sample_rate=44100, num_channels=1))
    down, _ = await run_test(gate, frames_to_send=frames)
    kinds = [type(f) for f in down if not isinstance(f, InputAudioRawFrame)]
    onset = kinds.index(SpeechOnsetFrame)
    started = kinds.index(VADUserStartedSpeakingFrame)
    assert onset < started
    assert ProbableSpeechEndFrame in kinds[started:]
    assert VADUserStoppedSpeakingFrame in kinds[started:]
    messages = [f.message for f in down if isinstance(f, OutputTransportMessageUrgentFrame)]
    types = [message_kind(m) for m in messages]
    assert types[0] == "playback-pause"
    assert all(m["label"] == "rtvi-ai" for m in messages)  # the official SDK surfaces them
    # No user turn was open: Pipecat's interruption flushes, the gate stays quiet.
    assert "playback-flush" not in types and "playback-resume" not in types
    assert any(m["type"] == "error" and "44100" in m["data"]["error"] for m in messages)


async def test_recognizer_threads_can_run_at_a_lower_priority():
    """--stt-nice lowers the loading thread (CTranslate2's threads inherit it) only."""
    import os
    import threading

    from pipecat_vibevoice.pipeline.thread_priority import run_in_lowered_thread

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice_of_this_thread()
    if base + 3 > 19:
        pytest.skip("already at the lowest priority")
    assert await run_in_lowered_thread(3, nice_of_this_thread, name="t") == base + 3
    assert await run_in_lowered_thread(0, nice_of_this_thread, name="t") == base
    assert nice_of_this_thread() == base, "the caller's own priority must not change"
    with pytest.raises(ZeroDivisionError):
        await run_in_lowered_thread(1, lambda: 1 / 0, name="t")
    with pytest.raises(BotConfigError, match="stt_nice"):
        BotConfig(stt_nice=25)


def test_the_playout_lead_grows_with_lateness_and_fades_back():
    from pipecat_vibevoice.bot.transport import (
        BASE_LEAD_S,
        LATENESS_HALF_LIFE_S,
        MAX_LEAD_S,
        PlayoutLead,
    )

    lead = PlayoutLead()
    chunk = 0.04
    now = 100.0
    # On time: the client is kept BASE_LEAD_S ahead (the first chunks go out at once).
    waits = []
    for _ in range(10):
        wait = lead.sent(chunk, now)
        waits.append(wait)
        now += wait
    assert waits[0] == pytest.approx(0.0, abs=1e-9)
    assert lead.ends_at - now == pytest.approx(BASE_LEAD_S, abs=chunk)
    # A write 120 ms after the client ran dry: the lead grows, within its cap.
    now = lead.ends_at + 0.12
    lead.sent(chunk, now)
    assert lead.target(now) == pytest.approx(min(MAX_LEAD_S, BASE_LEAD_S + 0.24))
    # ...and fades back as writes stay on time.
    later = now + 4 * LATENESS_HALF_LIFE_S
    assert lead.target(later) < BASE_LEAD_S + 0.24 / 8
    # A pause between replies is not lateness; an interruption forgets the playout.
    quiet = PlayoutLead()
    quiet.sent(chunk, 0.0)
    quiet.sent(chunk, 5.0)
    assert quiet.target(5.0) == BASE_LEAD_S
    quiet.reset()
    assert quiet.sent(chunk, 5.01) == pytest.approx(0.0, abs=1e-9)


def _vad_states(analyzer, audio: np.ndarray) -> list:
    """The analyzer's state after each 20 ms frame, fed as a transport would."""
    import asyncio

    analyzer.set_sample_rate(16000)

    async def feed() -> list:
        return [
            await analyzer.analyze_audio(audio[i : i + 320].tobytes())
            for i in range(0, len(audio) - 319, 320)
        ]

    return asyncio.run(feed())


@pytest.mark.parametrize("noise_dbfs", [-80.0, -60.0])
def test_silero_is_skipped_only_where_pipecat_could_not_hear_speech(speech, noise_dbfs):
    """Quiet windows skip the model; Pipecat's VAD hears the same speech as with every window.

    The reference is Pipecat's own SileroVADAnalyzer (own model copy, every window
    scored) on the same audio: a room's noise floor (-80 and -60 dBFS, both under
    Pipecat's min_volume, so skipped), the test phrase, and the phrase again 12 dB
    quieter (an onset the model's state matters for). Confirmed speech must start and
    end in the same 32 ms window (1.6 frames of 20 ms, so within 2 frames): a one-window
    dip to STOPPING inside speech is a borderline score either analyzer may have on
    another CPU, so it does not split a segment.
    """
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADState

    from pipecat_vibevoice.pipeline.models import _pipecat_data_file, load_onnx_session
    from pipecat_vibevoice.pipeline.vad import SharedSileroVADAnalyzer

    rng = np.random.default_rng(3)

    def noisy(signal: np.ndarray) -> np.ndarray:
        floor = rng.normal(0, 32768 * 10 ** (noise_dbfs / 20), len(signal))
        return np.clip(signal + floor, -32768, 32767).astype(np.int16)

    def quiet(seconds: float) -> np.ndarray:
        return noisy(np.zeros(int(16000 * seconds)))

    question = speech["question"].astype(np.float64)
    audio = np.concatenate(
        [quiet(1.5), noisy(question), quiet(3.0), noisy(question * 10 ** (-12 / 20)), quiet(1.5)]
    )
    session = load_onnx_session(_pipecat_data_file("pipecat.audio.vad.data", "silero_vad.onnx"))
    gated = SharedSileroVADAnalyzer(session)
    reference = _vad_states(SileroVADAnalyzer(), audio)
    states = _vad_states(gated, audio)

    def segments(seq: list) -> list[tuple[int, int]]:
        heard = [s in (VADState.SPEAKING, VADState.STOPPING) for s in seq] + [False]
        starts = [i for i, h in enumerate(heard) if h and (i == 0 or not heard[i - 1])]
        ends = [i for i, h in enumerate(heard) if not h and i and heard[i - 1]]
        return list(zip(starts, ends, strict=True))

    ours, theirs = segments(states), segments(reference)
    assert len(theirs) == 2, f"both utterances are speech to Pipecat: {theirs}"
    assert len(ours) == 2, (ours, theirs)
    for (a0, a1), (b0, b1) in zip(ours, theirs, strict=True):
        assert abs(a0 - b0) <= 2 and abs(a1 - b1) <= 2, (ours, theirs)
    windows = gated.model_windows + gated.skipped_windows
    quiet_share = 6.0 / (len(audio) / 16000)
    # The noise is skipped but for the ~400 ms the volume window holds after speech.
    assert gated.skipped_windows >= 0.7 * quiet_share * windows
    assert gated.model_windows >= (1 - quiet_share) * windows
