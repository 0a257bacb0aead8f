"""When the recognizer ends a user turn: frame-level tests of ``StreamingWhisperSTT``.

The recognizer here is scripted (what Whisper hears is covered end to end by the
websocket tests); these tests pin the turn rules, which must not depend on how
sure or how late a given Whisper build is: a guessed last word never ends a turn
early, and a speculative transcript that missed speech is never used.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    SystemFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from pipecat_vibevoice.pipeline.frames import ProbableSpeechEndFrame
from pipecat_vibevoice.pipeline.stt import StreamingWhisperSTT
from pipecat_vibevoice.pipeline.transcriber import (
    MAX_PENDING_INTERIM,
    Transcriber,
    Transcript,
    last_word_probability,
)

RATE = 16000
STOP_SECS = 0.2
MAX_PAUSE_SECS = 0.9


@dataclass
class MarkerFrame(SystemFrame):
    """Passes straight through; shows where in time the transcript arrived."""


class ScriptedTranscriber:
    """Answers with a fixed transcript and records how much audio it was given."""

    FINAL = 0
    INTERIM = 1

    def __init__(self, text: str, tail_confidence: float | None) -> None:
        self.text = text
        self.tail_confidence = tail_confidence
        self.calls: list[float] = []

    async def transcribe(self, audio: np.ndarray, priority: int = FINAL) -> Transcript:
        self.calls.append(len(audio) / RATE)
        return Transcript(f"[{len(audio) / RATE:.1f}s] {self.text}", self.tail_confidence)


def speech_frames(seconds: float) -> list[Frame]:
    """20 ms frames of a loud tone (the VAD frames around them are sent explicitly)."""
    n = int(RATE * 0.02)
    tone = (8000 * np.sin(np.arange(n) * 2 * np.pi * 220 / RATE)).astype("<i2").tobytes()
    return [
        InputAudioRawFrame(audio=tone, sample_rate=RATE, num_channels=1)
        for _ in range(int(seconds / 0.02))
    ]


async def run_turn(transcriber: ScriptedTranscriber, middle: list[Frame]) -> list[Frame]:
    stt = StreamingWhisperSTT(
        transcriber,
        interim_secs=0,
        stop_secs=STOP_SECS,
        max_pause_secs=MAX_PAUSE_SECS,
        short_turn_words=0,
        min_tail_confidence=0.4,
    )
    frames = [
        VADUserStartedSpeakingFrame(start_secs=0.2),
        *speech_frames(1.0),
        *middle,
        VADUserStoppedSpeakingFrame(stop_secs=STOP_SECS),
        # The transcript arrives before the marker if the turn ends at VAD's stop,
        # after it if the turn waits for max_pause_secs (0.7 s after the stop).
        SleepFrame(sleep=0.35),
        MarkerFrame(),
        SleepFrame(sleep=1.0),
    ]
    down, _ = await run_test(stt, frames_to_send=frames)
    return [f for f in down if isinstance(f, TranscriptionFrame | MarkerFrame)]


def ended_early(frames: list[Frame]) -> bool:
    kinds = [type(f) for f in frames]
    assert sorted(k.__name__ for k in kinds) == ["MarkerFrame", "TranscriptionFrame"], kinds
    return kinds[0] is TranscriptionFrame


async def test_a_finished_sentence_heard_with_confidence_ends_the_turn_at_once():
    transcriber = ScriptedTranscriber("I would like a large pizza.", tail_confidence=0.93)
    assert ended_early(await run_turn(transcriber, []))


async def test_a_guessed_last_word_waits_for_the_long_pause():
    # "pizza with" heard as "piece of width": it sounds finished, but the last word
    # is a guess, so the turn must not end before max_pause_secs.
    transcriber = ScriptedTranscriber("I would like a large piece of width.", tail_confidence=0.2)
    assert not ended_early(await run_turn(transcriber, []))


async def test_an_unfinished_sentence_waits_for_the_long_pause():
    transcriber = ScriptedTranscriber("I would like a large pizza with", tail_confidence=0.95)
    assert not ended_early(await run_turn(transcriber, []))


async def test_unknown_confidence_leaves_the_decision_to_the_text():
    transcriber = ScriptedTranscriber("I would like a large pizza.", tail_confidence=None)
    assert ended_early(await run_turn(transcriber, []))


async def test_a_speculative_transcript_that_missed_speech_is_not_used():
    # A probable end after 1 s, then the user goes on softly (no "resumed" signal) for
    # another second: the final text must cover all 2 s, not the first one.
    transcriber = ScriptedTranscriber("words", tail_confidence=0.9)
    frames = await run_turn(transcriber, [ProbableSpeechEndFrame(), *speech_frames(1.0)])
    final = next(f for f in frames if isinstance(f, TranscriptionFrame))
    assert transcriber.calls[0] == pytest.approx(1.0, abs=0.1)
    assert final.text.startswith("[2.0s]"), (final.text, transcriber.calls)


async def test_a_fresh_speculative_transcript_is_reused():
    transcriber = ScriptedTranscriber("words", tail_confidence=0.9)
    frames = await run_turn(transcriber, [ProbableSpeechEndFrame(), *speech_frames(0.1)])
    final = next(f for f in frames if isinstance(f, TranscriptionFrame))
    assert len(transcriber.calls) == 1, transcriber.calls
    assert final.text.startswith("[1.0s]"), final.text


@pytest.mark.parametrize(
    ("tokens", "probabilities", "expected"),
    [
        ([" I", " want", " piz", "za", "."], [0.9, 0.9, 0.8, 0.5, 0.1], 0.4),
        ([" Hello", "!"], [0.7, 0.2], 0.7),
        (["Hi"], [0.6], 0.6),
        ([".", "?"], [0.9, 0.9], None),
    ],
)
def test_last_word_probability_ignores_punctuation(tokens, probabilities, expected):
    got = last_word_probability(tokens, probabilities)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.fixture(scope="module")
def whisper_model():
    """The bundled faster-whisper tiny.en, loaded once for the scheduling tests."""
    from faster_whisper import WhisperModel

    from pipecat_vibevoice.pipeline.models import bundled_whisper_path

    return WhisperModel(
        str(bundled_whisper_path()), device="cpu", compute_type="int8", cpu_threads=1
    )


@pytest.fixture
def transcriber(whisper_model):
    """A fresh :class:`Transcriber` (its own queues and workers) over the shared model."""
    transcriber = Transcriber(whisper_model)
    yield transcriber
    transcriber.close()


async def test_interim_transcripts_that_pile_up_are_shed_oldest_first(transcriber, speech):
    """Six partial transcripts at once: the worker decodes a few, the stale ones come
    back empty at once instead of holding the CPU; final ones are never shed."""
    audio = speech["question"].astype(np.float32) / 32768.0
    interim = [transcriber.transcribe(audio, Transcriber.INTERIM) for _ in range(6)]
    finals = [transcriber.transcribe(audio, Transcriber.FINAL) for _ in range(3)]
    results = await asyncio.gather(*interim, *finals)
    interim_texts = [r.text for r in results[:6]]
    assert transcriber.shed >= 6 - 1 - MAX_PENDING_INTERIM, interim_texts
    assert interim_texts.count("") == transcriber.shed
    assert "time is it" in interim_texts[-1].lower(), "the newest must be decoded"
    assert all("time is it" in r.text.lower() for r in results[6:]), "finals are never shed"


async def test_an_interim_transcript_waits_while_final_ones_run(transcriber, speech):
    audio = speech["question"].astype(np.float32) / 32768.0
    done: list[str] = []

    async def run(name: str, priority: int) -> None:
        await transcriber.transcribe(audio, priority)
        done.append(name)

    await asyncio.gather(
        run("final-1", Transcriber.FINAL),
        run("interim", Transcriber.INTERIM),
        run("final-2", Transcriber.FINAL),
    )
    assert done == ["final-1", "final-2", "interim"], done


async def test_final_transcripts_queued_together_are_decoded_in_batches(transcriber, speech):
    """Four conversations end their turns at once: the finals share decoder batches
    (the first may start alone before the others arrive) and each says what it heard."""
    audio = speech["question"].astype(np.float32) / 32768.0
    batches_before, jobs_before = transcriber.batches, transcriber.jobs
    results = await asyncio.gather(
        *(transcriber.transcribe(audio * gain, Transcriber.FINAL) for gain in (1.0, 0.8, 0.6, 0.9))
    )
    assert transcriber.jobs - jobs_before == 4
    assert transcriber.batches - batches_before <= 2, "finals were decoded one by one"
    assert all("time is it" in r.text.lower() for r in results), [r.text for r in results]
    assert all(r.tail_confidence is not None for r in results)


async def test_the_final_transcript_latency_is_reported_for_admission(transcriber, speech):
    """What the admission reads: the median queue wait plus decoding of recent finals
    (three at least, so that one slow decode is not read as overload)."""
    assert transcriber.final_latency() == 0.0
    audio = speech["question"].astype(np.float32) / 32768.0
    await asyncio.gather(*(transcriber.transcribe(audio, Transcriber.FINAL) for _ in range(3)))
    latency = transcriber.final_latency()
    assert latency > 0.0
    assert transcriber.final_latency(window_secs=0.0) == 0.0  # nothing finished that recently
