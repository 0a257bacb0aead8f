"""The service on the VibeVoice backend (tiny fixture model on CPU): token streaming,
per-request VibeVoice options, and interruption within one latent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import torch
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from services.service_helpers import InterruptAfterAudio, Timeline, audio_frames, shape
from vibevoice.conftest import FIXTURE, build_tiny_tokenizer, link_model_dir

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
    VibeVoiceRealtimeModel,
)
from pipecat_vibevoice.services import VibeVoiceTTSService

TOKEN = TextAggregationMode.TOKEN
Settings = VibeVoiceTTSService.Settings
FIRST = ["Hello", " there", ",", " my", " friend", ".", " Streaming"]
REST = [" speech", " starts", " as", " soon", " as", " the", " first", " window", " is", " ready."]


class OptionLog:
    """Wraps the real backend's ``stream``: records each request's options and the times
    of the latents it yields (waiting markers are not work and are not counted)."""

    def __init__(self, engine: TTSEngine) -> None:
        self.backend = engine.backend
        self.options: list[dict] = []
        self.times: list[float] = []

    def __enter__(self) -> OptionLog:
        original = self.backend.stream

        def stream(request):
            self.options.append(dict(request.options))
            for piece in original(request):
                if piece.audio.size:
                    self.times.append(time.monotonic())
                yield piece

        self.backend.stream = stream
        return self

    def __exit__(self, *exc: object) -> None:
        del self.backend.stream


@pytest.fixture(scope="module")
def vibevoice_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TTSEngine]:
    """A VibeVoice engine on the tiny fixture model; its EOS head says "not yet"."""
    assert (FIXTURE / "config.json").is_file(), f"missing fixture {FIXTURE}"
    root = tmp_path_factory.mktemp("tiny-vibevoice")
    tokenizer = build_tiny_tokenizer(root)
    model_dir = link_model_dir(root / "model", tokenizer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            VibeVoiceRealtimeModel,
            "eos_logit",
            lambda self, hidden: torch.full((hidden.shape[0],), -4.0),
        )
        engine = TTSEngine(TTSConfig(engine="vibevoice", model_path=str(model_dir), device="cpu"))
        asyncio.run(engine.initialize())
        yield engine
        asyncio.run(engine.cleanup())


def turn(*groups: list[str], pause: float = 0.0) -> list:
    frames: list = [LLMFullResponseStartFrame()]
    for index, group in enumerate(groups):
        if index and pause:
            frames.append(SleepFrame(sleep=pause))
        frames.extend(LLMTextFrame(t) for t in group)
    frames.append(LLMFullResponseEndFrame())
    return frames


async def test_tokens_stream_into_one_vibevoice_request_with_its_options(
    vibevoice_engine: TTSEngine,
) -> None:
    tts = VibeVoiceTTSService(
        vibevoice_engine,
        text_aggregation_mode=TOKEN,
        settings=Settings(inference_steps=2, cfg_scale=1.3),
        engine_options={"seed": 5},
        warmup=False,
    )
    timeline = Timeline(tts)
    with OptionLog(vibevoice_engine) as log:
        down, up = await run_test(
            tts, frames_to_send=turn(FIRST, REST, pause=2.0), observers=[timeline], start_timeout=30
        )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert log.options == [{"seed": 5, "cfg_scale": 1.3, "inference_steps": 2}]
    # Speech began from the first words, before the rest of the turn was sent.
    first_audio = timeline.first_pushed(TTSAudioRawFrame)
    rest_arrived = next(
        t for t, f in timeline.processed if isinstance(f, LLMTextFrame) and f.text == REST[0]
    )
    assert first_audio < rest_arrived
    audio = audio_frames(down)
    assert len({f.context_id for f in audio}) == 1
    assert {len(f.audio) for f in audio[:-1]} == {3840}
    names = shape(down)
    assert names.count("TTSStartedFrame") == 1 and names.count("TTSStoppedFrame") == 1
    # Text frames come word by word behind the audio that speaks them (the model's
    # text windows), each with its presentation time, in order.
    texts = [f for f in down if isinstance(f, TTSTextFrame)]
    assert " ".join(f.text for f in texts) == "".join(FIRST + REST)
    first_text = down.index(texts[0])
    assert audio_frames(down[:first_text]), "a sentence's text ran ahead of its audio"
    last_text = down.index(texts[-1])
    assert audio_frames(down[first_text:last_text]), "the second sentence's text ran ahead"
    pts = [f.pts for f in texts]
    assert all(pts) and pts == sorted(pts)


async def test_cfg_and_steps_updates_reach_the_next_request(vibevoice_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(
        vibevoice_engine,
        settings=Settings(inference_steps=2),
        engine_options={"seed": 1},
        warmup=False,
    )
    with OptionLog(vibevoice_engine) as log:
        _, up = await run_test(
            tts,
            frames_to_send=[
                *turn(["Hello", " there."]),
                TTSUpdateSettingsFrame(delta=Settings(cfg_scale=2.5, inference_steps=3)),
                *turn(["Hello", " again."]),
            ],
            start_timeout=30,
        )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert [(o["cfg_scale"], o["inference_steps"]) for o in log.options] == [(1.5, 2), (2.5, 3)]


async def test_interruption_stops_vibevoice_within_one_latent(vibevoice_engine: TTSEngine) -> None:
    tts = VibeVoiceTTSService(
        vibevoice_engine,
        text_aggregation_mode=TOKEN,
        settings=Settings(inference_steps=2),
        warmup=False,
    )
    timeline = Timeline(tts)
    interrupter = InterruptAfterAudio(tts)
    long_turn = (FIRST + REST) * 6
    with OptionLog(vibevoice_engine) as log:
        down, up = await run_test(
            tts,
            frames_to_send=[
                LLMFullResponseStartFrame(),
                *[LLMTextFrame(t) for t in long_turn],
                SleepFrame(sleep=2.0),  # interrupted after its 3rd audio frame
            ],
            observers=[timeline, interrupter],
            start_timeout=30,
        )
    assert interrupter.sent_at is not None, "the turn produced no audio to interrupt"
    interrupted_at = timeline.first_processed(InterruptionFrame)
    before = sum(1 for t in log.times if t <= interrupted_at)
    late = sum(1 for t in log.times if t > interrupted_at)
    assert before > 0, "no latent was made before the interruption"
    assert late <= 1, f"{late} latents were made after the interruption (allowed: 1)"
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert audio_frames(down[:cut]) and not audio_frames(down[cut:])
    assert not tts._token_turns
