"""The batch scheduler: batched utterances equal solo ``generate()`` runs, stop, close, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipecat_vibevoice.engine import GrowingText
from pipecat_vibevoice.models.vibevoice_realtime.batcher import BatcherClosed, VibeVoiceBatcher
from pipecat_vibevoice.models.vibevoice_realtime.generation import (
    WAITING,
    GenerationSettings,
    TextTokenStream,
    TorchNoise,
    generate,
)

from .conftest import CallCounter
from .numerics import assert_agree
from .test_batching import short_voice

TEXTS = [
    "Hello there, my friend. How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "Voice bots answer in real time: they listen, think, and speak.",
]


@pytest.fixture
def batcher(tiny_model64):
    batcher = VibeVoiceBatcher(tiny_model64, max_batch=8)
    yield batcher
    batcher.close()


#: The model's sampling, decoding and connector calls.
COUNTED = ("predict", "decode", "connect")


def solo(model, preset, encode, text, settings, seed) -> list:
    tokens = TextTokenStream.whole(encode, text)
    return list(generate(model, preset, tokens, settings, TorchNoise(seed)))


def assert_same_items(got: list, expected: list) -> None:
    """Same items, same stop step; audio, latents and EOS equal up to float64 rounding.

    The batcher runs the float64 model here: batched and single-row matrix products round
    differently, and only in float64 is that difference far below anything a mistake
    would make, on every CPU (``numerics.float64_agreement``).
    """
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert (a.index, a.window, a.tokens, a.kept) == (b.index, b.window, b.tokens, b.kept)
        assert_agree(a.audio, b.audio, f"audio of latent {a.index}")
        assert_agree(a.latent, b.latent, f"latent {a.index}")
    last_a, last_b = got[-1].eos_logit, expected[-1].eos_logit
    assert (last_a is None) == (last_b is None)
    if last_a is not None:
        assert_agree(np.array([last_a]), np.array([last_b]), "last EOS logit")


def consume(handle, out: list, started: threading.Event | None = None, after: int = 0) -> None:
    for item in handle:
        out.append(item)
        if started is not None and len(out) >= after:
            started.set()
    if started is not None:
        started.set()


def test_staggered_utterances_equal_their_solo_runs(
    tiny_model64, tiny_preset64, encode, batcher
) -> None:
    """Different texts, voices, solvers and caps, started at different times."""
    voices = [tiny_preset64, short_voice(tiny_preset64), tiny_preset64]
    settings = [
        GenerationSettings(),  # real EOS head decides the end
        GenerationSettings(cfg_scale=2.0, inference_steps=3),
        GenerationSettings(max_latents=9, complete_window_after_eos=True),
    ]
    seeds = [21, 22, 23]
    expected = [
        solo(tiny_model64, v, encode, t, s, seed)
        for v, t, s, seed in zip(voices, TEXTS, settings, seeds, strict=True)
    ]
    outputs: list[list] = [[], [], []]
    gates = [threading.Event() for _ in range(3)]
    threads = []
    for i in range(3):
        if i:
            assert gates[i - 1].wait(30)  # start once the previous one has 2 latents
        tokens = TextTokenStream.whole(encode, TEXTS[i])
        handle = batcher.submit(voices[i], tokens, settings[i], TorchNoise(seeds[i]))
        thread = threading.Thread(target=consume, args=(handle, outputs[i], gates[i], 2))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    for got, want in zip(outputs, expected, strict=True):
        assert_same_items(got, want)
    assert batcher.peak_batch_size >= 2  # they really shared model steps


def test_streamed_text_next_to_whole_text(tiny_model64, tiny_preset64, encode, batcher, no_eos) -> None:
    """A text stream fed word by word on WAITING, batched beside a whole text."""
    text = TEXTS[0]
    streamed_settings = GenerationSettings(max_latents=14, inference_steps=2)
    whole_settings = GenerationSettings(max_latents=16, inference_steps=2)
    expected_stream = solo(tiny_model64, tiny_preset64, encode, text, streamed_settings, 31)
    expected_whole = solo(tiny_model64, tiny_preset64, encode, "Hi.", whole_settings, 32)

    source = GrowingText()
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1].rstrip()
    stream = TextTokenStream(encode, source.snapshot)
    streamed_handle = batcher.submit(tiny_preset64, stream, streamed_settings, TorchNoise(31))
    whole_out: list = []
    whole_handle = batcher.submit(
        tiny_preset64, TextTokenStream.whole(encode, "Hi."), whole_settings, TorchNoise(32)
    )
    worker = threading.Thread(target=consume, args=(whole_handle, whole_out))
    worker.start()
    streamed, waits = [], 0
    for item in streamed_handle:
        if item is WAITING:
            waits += 1
            if words:
                source.append(words.pop(0))
            else:
                source.close()
            continue
        streamed.append(item)
    worker.join(60)
    assert waits > 1
    assert_same_items(streamed, expected_stream)
    assert_same_items(whole_out, expected_whole)


def test_trailing_cap_through_the_batcher(tiny_model64, tiny_preset64, encode, batcher, no_eos) -> None:
    from pipecat_vibevoice.models.vibevoice_realtime import generation

    tokens = TextTokenStream.whole(encode, "Hi.")
    items = list(batcher.submit(tiny_preset64, tokens, GenerationSettings(inference_steps=1)))
    assert len(items) == generation.TRAILING_BASE + generation.TRAILING_PER_TOKEN * len(tokens.ids)


class StopOnFirstDraw:
    """Noise that sets the stop event while the first latent is being sampled."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.inner = TorchNoise(5)

    def draw(self, shape, device):
        self.stop.set()
        return self.inner.draw(shape, device)


def test_stop_during_a_latent_ends_after_that_latent(
    tiny_model64, tiny_preset64, encode, batcher, monkeypatch, no_eos
) -> None:
    calls = CallCounter(tiny_model64, monkeypatch, *COUNTED)
    stop = threading.Event()
    tokens = TextTokenStream.whole(encode, TEXTS[1])
    settings = GenerationSettings(inference_steps=2)
    handle = batcher.submit(tiny_preset64, tokens, settings, StopOnFirstDraw(stop), stop)
    items = list(handle)
    assert [i.index for i in items] == [0]  # the latent under way, then nothing
    time.sleep(0.1)
    # No LM step after it (the stop was seen before listen), no second latent.
    assert calls.calls == {"predict": 2, "decode": 1, "connect": 0}


def test_stop_after_the_first_latent(
    tiny_model64, tiny_preset64, encode, batcher, monkeypatch, no_eos
) -> None:
    calls = CallCounter(tiny_model64, monkeypatch, *COUNTED)
    stop = threading.Event()
    tokens = TextTokenStream.whole(encode, TEXTS[1])
    handle = batcher.submit(tiny_preset64, tokens, GenerationSettings(inference_steps=2), None, stop)
    first = next(handle)
    assert first.index == 0
    stop.set()
    rest = list(handle)
    assert len(rest) <= 1  # at most the latent already under way when stop was set
    time.sleep(0.1)
    assert calls.calls["decode"] == 1 + len(rest) <= 2
    assert batcher.active == 0


def test_close_of_a_handle_leaves_the_batch(tiny_model64, tiny_preset64, encode, batcher, no_eos):
    handle = batcher.submit(tiny_preset64, TextTokenStream.whole(encode, TEXTS[0]))
    next(handle)
    handle.close()
    deadline = time.time() + 5
    while batcher.active and time.time() < deadline:
        time.sleep(0.01)
    assert batcher.active == 0
    with pytest.raises(StopIteration):
        next(handle)


def test_at_most_max_batch_run_and_the_rest_wait_in_order(
    tiny_model64, tiny_preset64, encode, no_eos
) -> None:
    batcher = VibeVoiceBatcher(tiny_model64, max_batch=2)
    try:
        settings = GenerationSettings(max_latents=4, inference_steps=1)
        handles = [
            batcher.submit(tiny_preset64, TextTokenStream.whole(encode, t), settings, TorchNoise(i))
            for i, t in enumerate(TEXTS)
        ]
        first = [next(h) for h in handles[:2]]
        assert batcher.active == 2 and batcher.queued == 1
        outputs = [first[0:1] + list(handles[0]), first[1:2] + list(handles[1]), list(handles[2])]
        assert batcher.peak_batch_size == 2
        for i, (text, got) in enumerate(zip(TEXTS, outputs, strict=True)):
            assert_same_items(got, solo(tiny_model64, tiny_preset64, encode, text, settings, i))
        assert batcher.describe()["max_batch"] == 2
    finally:
        batcher.close()


def test_step_errors_reach_the_utterances_and_the_thread_survives(
    tiny_model64, tiny_preset64, encode, batcher, monkeypatch, no_eos
) -> None:
    original = tiny_model64.decode

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(tiny_model64, "decode", broken)
    handle = batcher.submit(tiny_preset64, TextTokenStream.whole(encode, TEXTS[0]))
    with pytest.raises(RuntimeError, match="decoder exploded"):
        next(handle)
    monkeypatch.setattr(tiny_model64, "decode", original)
    assert batcher.alive and batcher.active == 0
    settings = GenerationSettings(max_latents=2, inference_steps=1)
    tokens = TextTokenStream.whole(encode, "Hi.")
    items = list(batcher.submit(tiny_preset64, tokens, settings, TorchNoise(8)))
    assert len(items) == 2


def test_idle_worker_sleeps_and_close_ends_it(tiny_model64, tiny_preset64, encode) -> None:
    batcher = VibeVoiceBatcher(tiny_model64, max_batch=4)
    settings = GenerationSettings(max_latents=2, inference_steps=1)
    assert len(list(batcher.submit(tiny_preset64, TextTokenStream.whole(encode, "Hi."), settings)))
    ticks = batcher.ticks
    time.sleep(0.2)
    assert batcher.ticks == ticks  # no spinning while idle
    source = GrowingText()  # an utterance parked on streamed text when the batcher closes
    parked = batcher.submit(tiny_preset64, TextTokenStream(encode, source.snapshot), settings)
    assert next(parked) is WAITING
    batcher.close()
    assert not batcher.alive
    with pytest.raises(BatcherClosed):
        next(parked)
    with pytest.raises(BatcherClosed):
        batcher.submit(tiny_preset64, TextTokenStream.whole(encode, "Hi."))


def test_max_batch_is_validated(tiny_model64) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        VibeVoiceBatcher(tiny_model64, max_batch=0)
