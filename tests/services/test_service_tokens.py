"""TOKEN mode: a turn's tokens go into one engine stream, and speech starts before the turn ends."""

from __future__ import annotations

import functools

from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData, TTSUsageMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.errors import ErrorCategory
from services.service_helpers import PieceCounter, Timeline, audio_frames, shape

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.services import VibeVoiceTTSService
from pipecat_vibevoice.services.vibevoice.token_turns import TokenTurn

TOKEN = TextAggregationMode.TOKEN
FIRST = ["Hello", " there", ",", " friend", ".", " How"]
REST = [" are", " you", " doing", " this", " fine", " morning", "?"]


class RequestLog:
    """Records every request the engine gets (``stream_chunks``, which the service uses)."""

    def __init__(self, engine: TTSEngine) -> None:
        self.engine = engine
        self.kinds: list[str] = []

    def __enter__(self) -> RequestLog:
        original = self.engine.stream_chunks

        @functools.wraps(original)
        def wrapper(text, *args, **kwargs):
            self.kinds.append("str" if isinstance(text, str) else "stream")
            return original(text, *args, **kwargs)

        self.engine.stream_chunks = wrapper  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.stream_chunks


def turn(*groups: list[str], pause: float = 0.0) -> list:
    frames: list = [LLMFullResponseStartFrame()]
    for index, group in enumerate(groups):
        if index and pause:
            frames.append(SleepFrame(sleep=pause))
        frames.extend(LLMTextFrame(t) for t in group)
    frames.append(LLMFullResponseEndFrame())
    return frames


async def test_turn_is_one_engine_stream_and_speech_starts_before_the_turn_ends(
    piper_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=TOKEN)
    timeline = Timeline(tts)
    with RequestLog(piper_engine) as log:
        down, up = await run_test(
            tts,
            frames_to_send=turn(FIRST, REST, pause=2.5),
            observers=[timeline],
            pipeline_params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
            start_timeout=10,
        )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert log.kinds == ["stream"]
    # Metrics: one TTFB for the turn (first token to first audio), usage per turn.
    data = [d for f in down if isinstance(f, MetricsFrame) for d in f.data]
    assert len([d for d in data if isinstance(d, TTFBMetricsData) and d.value > 0]) == 1
    usage = [d.value for d in data if isinstance(d, TTSUsageMetricsData) and d.value]
    assert usage == [len("".join(FIRST + REST))]
    # The first sentence was spoken while the LLM was still "thinking" about the rest.
    first_audio = timeline.first_pushed(TTSAudioRawFrame)
    rest_arrived = next(
        t for t, f in timeline.processed if isinstance(f, LLMTextFrame) and f.text == REST[0]
    )
    assert first_audio < rest_arrived

    names = shape(down)
    assert names[0] == "LLMFullResponseStartFrame" and names[-1] == "LLMFullResponseEndFrame"
    assert names.count("TTSStartedFrame") == 1 and names.count("TTSStoppedFrame") == 1
    assert names.index("TTSStartedFrame") < names.index("TTSAudioRawFrame")
    assert names.index("TTSStoppedFrame") > len(names) - 1 - names[::-1].index("TTSAudioRawFrame")
    started = next(f for f in down if isinstance(f, TTSStartedFrame))
    stopped = next(f for f in down if isinstance(f, TTSStoppedFrame))
    audio = audio_frames(down)
    assert {f.context_id for f in audio} == {started.context_id} == {stopped.context_id}
    assert {len(f.audio) for f in audio[:-1]} == {3840}
    seconds = sum(len(f.audio) for f in audio) / 48000
    assert 2.0 < seconds < 8.0
    assert not tts._token_turns


async def test_each_word_text_follows_its_audio(piper_engine: TTSEngine) -> None:
    # The TTSTextFrame is what the assistant context records as said: it must not run
    # ahead of the audio. Each word comes after the audio chunk it starts in, with a
    # presentation time at which the output transport releases it.
    tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=TOKEN)
    tokens = ["Hello", " there.", " How", " are", " you", " today?", " I", " am", " fine."]
    down, _ = await run_test(tts, frames_to_send=turn(tokens), start_timeout=10)
    texts = [f for f in down if isinstance(f, TTSTextFrame)]
    assert [f.text for f in texts] == "Hello there. How are you today? I am fine.".split()
    first_audio = next(i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame))
    assert all(down.index(f) > first_audio for f in texts)
    pts = [f.pts for f in texts]
    assert all(p for p in pts) and pts == sorted(pts) and len(set(pts)) == len(pts)
    # Words are spread over the turn's audio, not bunched at its end.
    audio_s = sum(len(f.audio) for f in audio_frames(down)) / 48000
    assert (pts[-1] - pts[0]) / 1e9 > 0.5 * audio_s


async def test_speak_frame_and_consecutive_turns_in_token_mode(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=TOKEN)
    with RequestLog(piper_engine) as log:
        down, up = await run_test(
            tts,
            frames_to_send=[
                TTSSpeakFrame("A greeting first."),
                *turn(["One", " turn", "."]),
                *turn(["And", " another", "."]),
            ],
            start_timeout=10,
        )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert log.kinds == ["stream"] * 3
    contexts = []
    for f in audio_frames(down):
        if not contexts or contexts[-1] != f.context_id:
            contexts.append(f.context_id)
    assert len(contexts) == 3 == len(set(contexts))  # no interleaving between turns
    assert shape(down).count("TTSStoppedFrame") == 3


async def test_engine_error_in_a_token_stream_is_reported_and_next_turn_works(
    piper_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False, text_aggregation_mode=TOKEN)
    with PieceCounter(piper_engine, fail_first=1):
        down, up = await run_test(
            tts,
            frames_to_send=[*turn(["This", " fails", "."]), *turn(["This", " works", "."])],
            start_timeout=10,
        )
    failures = [f for f in up if isinstance(f, ErrorFrame) and "injected" in f.error]
    assert len(failures) == 1 and failures[0].category is ErrorCategory.SERVER
    assert len({f.context_id for f in audio_frames(down)}) == 1  # the second turn spoke
    assert shape(down).count("LLMFullResponseEndFrame") == 2
    assert tts.is_usable
    assert not tts._token_turns


async def test_token_turn_is_one_growing_text_read_by_the_engine() -> None:
    turn = TokenTurn("0123456789abcdef")
    for piece in ["Dr. Smith", " arrived.", " It was", " 3.5 degrees", ". Cold!"]:
        turn.append(piece)
    assert not turn.closed and turn.text.text == "Dr. Smith arrived. It was 3.5 degrees. Cold!"
    turn.close()
    turn.close()  # idempotent: flush and stop may both close a turn
    assert turn.closed and turn.text.pieces == 5
    await turn.text.wait_closed()  # what the speaker waits for after a failed request
    assert turn.task is None
