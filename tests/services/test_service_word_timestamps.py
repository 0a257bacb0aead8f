"""Word timestamps: the service's words reach the far side of a real output stage as played.

The service reports each engine chunk's words with ``add_word_timestamps``; Pipecat's base
turns them into ``TTSTextFrame``s with a presentation time, and the output transport
releases each at that time. What the assistant aggregator after ``transport.output()``
records is what comes out of the transport: after a barge-in that must be exactly the
words whose audio had started, whatever the text mode.
"""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSSpeakFrame,
    TTSTextFrame,
)
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams

from pipecat_vibevoice.engine import SpeechChunk, TTSEngine
from pipecat_vibevoice.services import VibeVoiceTTSService
from pipecat_vibevoice.services.word_timed import ContextClock

SENTENCES = [
    "The keeper climbed the stairs of the old lighthouse every evening.",
    "He lit the great lamp and watched the ships pass the rocks below.",
    "In the morning he wrote the names of the ships in a thick book.",
    "Years later his grandchildren read the book aloud by the fire.",
]
TEXT = " ".join(SENTENCES)
#: Output chunks (40 ms each) played before the barge-in: about 1.6 s of speech.
PLAYED_BEFORE_CUT = 40
#: Words within this of the cut may fall either side of it (the clock task's wake-up).
EDGE_S = 0.06


class PacedOutput(BaseOutputTransport):
    """An output transport that plays audio in real time, as a network transport does."""

    def __init__(self) -> None:
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_sample_rate=24000))

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        await asyncio.sleep(len(frame.audio) / 2 / frame.sample_rate)
        return True


class BargeIn(BaseObserver):
    """Interrupts once the output has played ``played`` chunks; notes the clock then.

    Also collects every word frame the service pushed (released or not).
    """

    def __init__(self, tts: VibeVoiceTTSService, output: PacedOutput, played: int) -> None:
        super().__init__()
        self.tts, self.output, self.played = tts, output, played
        self.seen = 0
        self.cut_ns: int | None = None
        self.words: list[TTSTextFrame] = []
        self._tasks: set[asyncio.Task] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.source is self.tts and isinstance(data.frame, TTSTextFrame):
            self.words.append(data.frame)
        if data.source is not self.output or not isinstance(data.frame, OutputAudioRawFrame):
            return
        self.seen += 1
        if self.seen == self.played:
            task = asyncio.create_task(self.tts.queue_frame(InterruptionFrame()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def on_process_frame(self, data: FrameProcessed) -> None:
        if data.processor is self.output and isinstance(data.frame, InterruptionFrame):
            if self.cut_ns is None:
                self.cut_ns = self.tts.get_clock().get_time()


def llm_turn(tokens: list[str]) -> list:
    return [LLMFullResponseStartFrame(), *[LLMTextFrame(t) for t in tokens], LLMFullResponseEndFrame()]


@pytest.mark.parametrize("mode", [TextAggregationMode.SENTENCE, TextAggregationMode.TOKEN])
async def test_barge_in_leaves_exactly_the_words_already_playing(
    piper_engine: TTSEngine, mode: TextAggregationMode
) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=mode)
    output = PacedOutput()
    barge_in = BargeIn(tts, output, PLAYED_BEFORE_CUT)
    tokens = [w + " " for w in TEXT.split(" ")]
    down, _ = await run_test(
        Pipeline([tts, output]),
        frames_to_send=[*llm_turn(tokens), SleepFrame(sleep=5.0)],
        observers=[barge_in],
        start_timeout=10,
    )
    assert barge_in.cut_ns is not None, "the output never played enough to interrupt"
    cut_s = barge_in.cut_ns / 1e9
    produced = barge_in.words
    words = TEXT.split()
    # The service timed the words it had audio for, in text order, one frame each.
    assert [f.text for f in produced] == words[: len(produced)]
    pts = [f.pts / 1e9 for f in produced]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert pts[-1] > cut_s + 0.5, "the cut came after all timed words: nothing to drop"
    # Downstream of the output: the words already playing at the cut, none after.
    heard = [f for f in down if isinstance(f, TTSTextFrame)]
    assert heard, "no word was released before the cut"
    assert [f.text for f in heard] == words[: len(heard)]
    assert all(f.pts / 1e9 <= cut_s + EDGE_S for f in heard)
    missed = [f.text for f in produced[len(heard) :] if f.pts / 1e9 < cut_s - EDGE_S]
    assert not missed, f"words played before the cut were dropped: {missed}"
    assert 3 <= len(heard) < len(words) / 2


async def test_sentences_of_one_turn_share_one_timeline(piper_engine: TTSEngine) -> None:
    # Sentence mode speaks an LLM turn sentence by sentence into one audio context:
    # each sentence's words are timed after the audio of the ones before.
    tts = VibeVoiceTTSService(piper_engine, warmup=False)
    down, _ = await run_test(
        tts, frames_to_send=llm_turn([s + " " for s in SENTENCES[:2]]), start_timeout=10
    )
    words = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text for f in words] == " ".join(SENTENCES[:2]).split()
    assert len({f.context_id for f in words}) == 1
    first_of_second = len(SENTENCES[0].split())
    gap_s = (words[first_of_second].pts - words[first_of_second - 1].pts) / 1e9
    audio_s = sum(len(f.audio) for f in down if isinstance(f, OutputAudioRawFrame)) / 48000
    first_sentence_s = (words[first_of_second].pts - words[0].pts) / 1e9
    assert 0.1 < gap_s < 1.5
    assert 0.3 * audio_s < first_sentence_s < 0.7 * audio_s


async def test_text_frames_are_words_whatever_the_caller_asks(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False, push_text_frames=True)
    assert tts._push_text_frames is False
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("One two three.")])
    assert [f.text for f in down if isinstance(f, TTSTextFrame)] == ["One", "two", "three."]


def chunk(start_s: float, end_s: float, *words: tuple[str, float]) -> SpeechChunk:
    return SpeechChunk(b"", start_s, end_s, None, "", tuple(words))


def test_context_clock_places_requests_back_to_back_and_underruns_late() -> None:
    clock = ContextClock()
    # First request: its own times.
    assert clock.place(chunk(0.0, 0.08, ("Hi", 0.02)), now=100.0) == [("Hi", 0.02)]
    assert clock.place(chunk(0.08, 0.16), now=100.01) == []
    # A second request in the same context starts where the audio so far ends...
    assert clock.place(chunk(0.0, 0.08, ("there", 0.05)), now=100.02) == [
        ("there", pytest.approx(0.21))
    ]
    # ...unless the audio ran out before it came: then it plays when it arrives.
    assert clock.place(chunk(0.08, 0.16, ("again", 0.1)), now=102.0) == [
        ("again", pytest.approx(2.02))
    ]
    assert clock.audio_s == pytest.approx(2.08)
