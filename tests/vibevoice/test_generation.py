"""The streaming loop: stop within one latent, streamed text equals whole text."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipecat_vibevoice.engine import GrowingText
from pipecat_vibevoice.models.vibevoice_realtime.generation import (
    SPEECH_WINDOW,
    TEXT_WINDOW,
    WAITING,
    GenerationSettings,
    TextTokenStream,
    TorchNoise,
    generate,
)

from .conftest import CallCounter

TEXT = "Hello there, my friend. Streaming speech starts as soon as the first window is ready."


#: The model steps that make up a latent.
LATENT_STEPS = ("predict", "decode", "forward_speech", "forward_text")


def test_stop_before_the_next_latent(tiny_model, tiny_preset, encode, monkeypatch, no_eos) -> None:
    counter = CallCounter(tiny_model, monkeypatch, *LATENT_STEPS)
    stop = threading.Event()
    tokens = TextTokenStream.whole(encode, TEXT)
    gen = generate(tiny_model, tiny_preset, tokens, GenerationSettings(), TorchNoise(1), stop)
    first = next(gen)
    assert first.index == 0
    assert counter.calls["predict"] == 5 and counter.calls["decode"] == 1
    stop.set()
    with pytest.raises(StopIteration):
        next(gen)
    # Not one more diffusion step, decode or LM step after the stop.
    assert counter.calls == {"predict": 5, "decode": 1, "forward_speech": 0, "forward_text": 1}


def test_stop_mid_window_after_a_few_latents(
    tiny_model, tiny_preset, encode, monkeypatch, no_eos
) -> None:
    counter = CallCounter(tiny_model, monkeypatch, *LATENT_STEPS)
    stop = threading.Event()
    tokens = TextTokenStream.whole(encode, TEXT)
    gen = generate(
        tiny_model, tiny_preset, tokens, GenerationSettings(inference_steps=3), None, stop
    )
    got = [next(gen) for _ in range(8)]  # into the second window
    stop.set()
    assert list(gen) == []
    assert [g.index for g in got] == list(range(8))
    assert counter.calls["decode"] == 8 and counter.calls["predict"] == 8 * 3
    assert counter.calls["forward_speech"] == 2 * 7  # positive + negative after latents 0..6


def text_stream_ids(encode, pieces: list[str]) -> list[int]:
    source = GrowingText()
    stream = TextTokenStream(encode, source.snapshot)
    ids: list[int] = []
    for piece in pieces:
        source.append(piece)
        while (window := stream.take(TEXT_WINDOW)) is not None and window:
            ids += window
    source.close()
    while window := stream.take(TEXT_WINDOW):
        ids += window
    return ids


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="abcdef ABC.,!?'\n0123-", min_size=1, max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=12),
)
def test_streamed_tokens_equal_whole_text_tokens(encode, text: str, cuts: list[int]) -> None:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(points, points[1:], strict=False)]
    whole = TextTokenStream.whole(encode, text)
    expected = []
    while window := whole.take(TEXT_WINDOW):
        expected += window
    assert text_stream_ids(encode, pieces) == expected
    if text.strip():
        assert expected == encode(text.strip() + "\n")[0]
    else:
        assert expected == []


def test_token_stream_waits_for_a_full_window(encode) -> None:
    source = GrowingText()
    stream = TextTokenStream(encode, source.snapshot)
    source.append("Hello")
    assert stream.take(TEXT_WINDOW) is None  # no safe cut yet: "Hello" may grow
    source.append(" there, my friend, how are")
    window = stream.take(TEXT_WINDOW)
    assert window is not None and len(window) == TEXT_WINDOW
    source.close()
    rest = []
    while w := stream.take(TEXT_WINDOW):
        rest += w
    assert window + rest == encode("Hello there, my friend, how are\n")[0]
    assert stream.char_span(0, 1) == (0, 5) or stream.char_span(0, 1)[0] == 0


def test_streamed_text_gives_the_same_audio(tiny_model, tiny_preset, encode, no_eos) -> None:
    """Text arriving word by word yields exactly the audio of the whole text."""
    options = GenerationSettings(max_latents=3 * SPEECH_WINDOW + 2, inference_steps=2)
    whole = [
        item.audio
        for item in generate(
            tiny_model, tiny_preset, TextTokenStream.whole(encode, TEXT), options, TorchNoise(7)
        )
    ]
    words = [w + " " for w in TEXT.split(" ")]
    words[-1] = words[-1].rstrip()
    source = GrowingText()
    stream = TextTokenStream(encode, source.snapshot)
    streamed, waits, appended_at_first_audio = [], 0, None
    for item in generate(tiny_model, tiny_preset, stream, options, TorchNoise(7)):
        if item is WAITING:
            waits += 1
            if words:
                source.append(words.pop(0))
            else:
                source.close()
            continue
        if appended_at_first_audio is None:
            appended_at_first_audio = len(source.text)
        streamed.append(item.audio)
    assert waits > 1
    assert appended_at_first_audio < len(TEXT) / 2  # speech started long before the text ended
    assert len(streamed) == len(whole) == options.max_latents
    np.testing.assert_array_equal(np.concatenate(streamed), np.concatenate(whole))


def test_empty_text_generates_nothing(tiny_model, tiny_preset, encode) -> None:
    tokens = TextTokenStream.whole(encode, "   ")
    assert list(generate(tiny_model, tiny_preset, tokens)) == []


def test_trailing_cap_stops_a_model_that_never_says_eos(
    tiny_model, tiny_preset, encode, no_eos
) -> None:
    from pipecat_vibevoice.models.vibevoice_realtime import generation

    tokens = TextTokenStream.whole(encode, "Hi.")
    settings = GenerationSettings(inference_steps=1)
    items = list(generate(tiny_model, tiny_preset, tokens, settings, TorchNoise(3)))
    assert len(items) == generation.TRAILING_BASE + generation.TRAILING_PER_TOKEN * len(tokens.ids)


def test_eos_ends_the_utterance_with_the_latent_that_fired(tiny_model, tiny_preset, encode) -> None:
    """With the real (random) EOS head: output ends at the first positive logit."""
    tokens = TextTokenStream.whole(encode, "Hi.")
    items = list(generate(tiny_model, tiny_preset, tokens, GenerationSettings(), TorchNoise(0)))
    logits = [i.eos_logit for i in items]
    assert all(x <= 0 for x in logits[:-1])
    assert logits[-1] > 0 or len(items) == 30 + 3 * len(tokens.ids)


def test_bfloat16_path_runs_end_to_end(fixture_dir) -> None:
    """The CUDA dtype (bf16) exercised on CPU: every step accepts it, audio is float32."""
    import torch

    from pipecat_vibevoice.models.vibevoice_realtime.checkpoint import load_model
    from pipecat_vibevoice.models.vibevoice_realtime.generation import FixedTokens
    from pipecat_vibevoice.models.vibevoice_realtime.presets import load_preset

    model = load_model(fixture_dir, "cpu", torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.speech_scaling_factor.dtype == torch.float32
    preset = load_preset(fixture_dir / "voice_preset.pt").to("cpu", torch.bfloat16)
    settings = GenerationSettings(max_latents=7, inference_steps=2)
    items = list(generate(model, preset, FixedTokens(list(range(1, 13))), settings, TorchNoise(0)))
    assert 1 <= len(items) <= 7
    for item in items:
        assert item.audio.dtype == np.float32 and item.audio.shape == (3200,)
        assert np.isfinite(item.audio).all()
