"""Interruption: the model stops within one piece of work, and no audio of the turn leaks."""

from __future__ import annotations

from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSTextFrame,
)
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from services.service_helpers import InterruptAfterAudio, PieceCounter, Timeline, audio_frames

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.services import VibeVoiceTTSService

SENTENCES = [
    "The first lighthouse keeper wrote in his log every single evening.",
    "He noted the wind, the height of the waves and the ships that passed.",
    "Some nights the fog was so thick that the lamp could barely be seen.",
    "On those nights he rang the great bell every minute until dawn.",
    "Years later his grandchildren found the logs in a wooden chest.",
    "They read them aloud by the fire during the long winter months.",
] * 6  # ~2 minutes of speech: far more than can be made before the interruption
LONG_TEXT = " ".join(SENTENCES)


def check_no_leak(down, interrupted_context: str) -> list[TTSAudioRawFrame]:
    """No audio of the interrupted context after the InterruptionFrame; return the audio after."""
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before = audio_frames(down[:cut])
    after = audio_frames(down[cut:])
    # The words of the interrupted turn were not all heard. Only words whose audio was
    # made before the interruption may come out, in order from the first, each with
    # the time the output transport releases it at (which drops those not yet played:
    # test_service_word_timestamps.py); nothing of the turn comes after the cut.
    said = [
        (i, f)
        for i, f in enumerate(down)
        if isinstance(f, TTSTextFrame) and f.context_id == interrupted_context
    ]
    words = LONG_TEXT.split()
    assert [f.text for _, f in said] == words[: len(said)], "words skipped or out of order"
    assert len(said) < len(SENTENCES[0].split()), "more words than the audio made"
    assert all(i < cut and f.pts for i, f in said), "an untimed word or one after the cut"
    assert before and all(f.context_id == interrupted_context for f in before)
    leaked = [f for f in after if f.context_id == interrupted_context]
    assert not leaked, f"{len(leaked)} audio frames of the interrupted turn came after it"
    return after


async def test_interrupting_a_speak_frame_stops_the_model(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(piper_engine, warmup=False)
    timeline = Timeline(tts)
    interrupter = InterruptAfterAudio(tts)
    with PieceCounter(piper_engine) as counter:
        down, up = await run_test(
            tts,
            frames_to_send=[
                TTSSpeakFrame(LONG_TEXT),
                # The interruption comes after the 3rd audio frame; the rest of this
                # time lets any runaway model work show up before the next utterance.
                SleepFrame(sleep=2.0),
                TTSSpeakFrame("Sorry, go ahead."),
            ],
            observers=[timeline, interrupter],
            start_timeout=10,
        )
    assert interrupter.sent_at is not None, "the long text produced no audio to interrupt"
    interrupted_at = timeline.first_processed(InterruptionFrame)
    next_turn_at = timeline.last_processed(TTSSpeakFrame)
    made_before = len(counter.times) - counter.after(interrupted_at)
    late = counter.after(interrupted_at) - counter.after(next_turn_at)
    assert made_before > 0, "the interruption came before any audio was made"
    assert late <= 1, f"the model made {late} pieces after the interruption (allowed: 1)"
    assert counter.closed_early >= 1, "the long text's model stream was not stopped"

    first_context = audio_frames(down)[0].context_id
    after = check_no_leak(down, first_context)
    assert after, "the next utterance produced no audio"
    assert tts.is_usable


async def test_interrupting_a_token_stream_stops_the_model(piper_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(
        piper_engine, warmup=False, text_aggregation_mode=TextAggregationMode.TOKEN
    )
    timeline = Timeline(tts)
    tokens = [w + " " for w in LONG_TEXT.split(" ")]
    interrupter = InterruptAfterAudio(tts)
    with PieceCounter(piper_engine) as counter:
        down, up = await run_test(
            tts,
            frames_to_send=[
                LLMFullResponseStartFrame(),
                *[LLMTextFrame(t) for t in tokens],
                SleepFrame(sleep=2.0),  # interrupted after its 3rd audio frame
                LLMFullResponseStartFrame(),
                *[LLMTextFrame(t) for t in ["Sorry, ", "go ", "ahead."]],
                LLMFullResponseEndFrame(),
            ],
            observers=[timeline, interrupter],
            start_timeout=10,
        )
    assert interrupter.sent_at is not None, "the turn produced no audio to interrupt"
    interrupted_at = timeline.first_processed(InterruptionFrame)
    next_turn_at = timeline.last_processed(LLMFullResponseStartFrame)
    made_before = len(counter.times) - counter.after(interrupted_at)
    late = counter.after(interrupted_at) - counter.after(next_turn_at)
    assert made_before > 0, "the interruption came before any audio was made"
    assert late <= 1, f"the model made {late} pieces after the interruption (allowed: 1)"
    assert counter.closed_early >= 1

    first_context = audio_frames(down)[0].context_id
    after = check_no_leak(down, first_context)
    assert after, "the next turn produced no audio"
    assert not tts._token_turns, "a token stream task outlived its turn"
