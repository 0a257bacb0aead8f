"""Streaming generation of one utterance: :func:`generate`, a generator of latents.

The loop's rules and model steps live in :class:`~.utterance.Utterance`; this driver runs
each step for one utterance and yields at the points where a consumer may act: after
every decoded latent (before the LM steps that prepare the next one, so the first chunk
is not held back) and with :data:`WAITING` while streamed text has no full window yet.

This module is also the package's front door for generation: the engine adapter and
the tests import the settings, token and noise sources and the sampler from here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .noise import NoiseSource, RecordedNoise, TorchNoise
from .sampling import make_scheduler, sample_latent, solver_dtype
from .settings import GenerationSettings
from .token_sources import Encoder, FixedTokens, TextTokenStream, TokenSource
from .utterance import (
    SPEECH_WINDOW,
    TEXT_WINDOW,
    TRAILING_BASE,
    TRAILING_PER_TOKEN,
    WAITING,
    NextStep,
    SpeechLatent,
    StreamItem,
    Utterance,
)

__all__ = [
    "SPEECH_WINDOW",
    "TEXT_WINDOW",
    "TRAILING_BASE",
    "TRAILING_PER_TOKEN",
    "WAITING",
    "Encoder",
    "FixedTokens",
    "GenerationSettings",
    "NoiseSource",
    "RecordedNoise",
    "SpeechLatent",
    "StreamItem",
    "TextTokenStream",
    "TokenSource",
    "TorchNoise",
    "generate",
    "make_scheduler",
    "sample_latent",
    "solver_dtype",
]


def generate(
    model: Any,
    preset: Any,
    tokens: TokenSource,
    settings: GenerationSettings | None = None,
    noise: NoiseSource | None = None,
    stop: threading.Event | None = None,
) -> Iterator[StreamItem]:
    """Stream latents for the text of ``tokens`` in the voice of ``preset``.

    ``preset`` must already be on the model's device and dtype. Stops before the next
    latent once ``stop`` is set, at EOS, at the latent cap or at the model's position
    limit (the rules of :class:`~.utterance.Utterance`).
    """
    stopped = stop.is_set if stop is not None else None
    utterance = Utterance(model, preset, tokens, settings, noise, stopped)
    while True:
        step = utterance.next_step()
        if step is NextStep.END:
            return
        if step is NextStep.WAIT_FOR_TEXT:
            yield WAITING
        elif step is NextStep.READ_WINDOW:
            utterance.read_window()
        elif step is NextStep.SPEAK:
            yield utterance.spoken(*utterance.speak())
        else:  # NextStep.LISTEN
            utterance.heard(utterance.listen(utterance.latent_to_listen))
