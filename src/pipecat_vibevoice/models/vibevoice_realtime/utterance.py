"""One VibeVoice-Realtime utterance as a state machine: its caches, model steps and loop rules.

The loop (the official one, see the fixture README): text arrives in windows of
:data:`TEXT_WINDOW` tokens; each window runs the lower and upper LM ("read"), then
:data:`SPEECH_WINDOW` speech steps follow. A speech step samples one latent with
DPM-Solver++ and classifier-free guidance and decodes it to 3 200 samples with the
streaming decoder ("speak"), then feeds it back through the connector into the positive
and negative upper-LM streams and checks EOS ("listen").

Two drivers run this loop: :func:`.generation.generate` (one utterance, as a generator)
and :class:`.batcher.VibeVoiceBatcher` (many utterances, one batched model call per
step). So the rules are written once, here, and a driver only chooses how to run each
model step::

    match utterance.next_step():               # the rules decide what comes next
        case NextStep.WAIT_FOR_TEXT: hand WAITING to the consumer, ask again later
        case NextStep.READ_WINDOW:   utterance.read_window()
        case NextStep.SPEAK:         utterance.spoken(*utterance.speak())   # or batched
        case NextStep.LISTEN:        utterance.heard(utterance.listen(...)) # or batched
        case NextStep.END:           done

Differences from the official ``generate`` (all deliberate):

* The loop is cut after every decoded latent, before the LM steps that prepare the next
  one, so the first chunk is not held back; the stop request is checked before every
  step (so before every latent and right after one was handed out), where the official
  loop polls once per window (~0.8 s of audio).
* Text comes from a :class:`~.token_sources.TokenSource` that may not have the next
  window yet (streaming text input): the utterance then says ``WAIT_FOR_TEXT``.
* After EOS the official loop finishes the current window (and discards its audio); we
  end at once unless ``complete_window_after_eos`` is set (used by the parity tests).
* Noise comes from a :class:`~.noise.NoiseSource`, so tests can replay the official draws.
* A model that never says EOS is stopped by the trailing rule (:data:`TRAILING_BASE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from loguru import logger

from .noise import NoiseSource, TorchNoise
from .sampling import make_scheduler, sample_latent
from .settings import GenerationSettings
from .token_sources import TokenSource

TEXT_WINDOW = 5
SPEECH_WINDOW = 6
#: After the text runs out, speech may continue (the model lags the text); this caps it
#: at ``TRAILING_BASE + TRAILING_PER_TOKEN · tokens`` latents in total, far beyond any
#: real speaking rate (3 latents = 0.4 s per token), so a model that never says EOS
#: cannot talk forever.
TRAILING_BASE = 30
TRAILING_PER_TOKEN = 3


# -- what a driver hands its consumer ---------------------------------------------------


@dataclass
class SpeechLatent:
    """One generated latent and its audio.

    ``eos_logit`` is filled in by the listen step that follows the latent (the EOS check
    needs the LM step after the decode); it stays ``None`` if the consumer stops first.
    """

    index: int
    window: int
    latent: torch.Tensor
    audio: np.ndarray
    tokens: tuple[int, int]
    kept: bool
    eos_logit: float | None = None
    condition: torch.Tensor | None = field(default=None, repr=False)


class _Waiting:
    def __repr__(self) -> str:
        return "WAITING"


#: Handed to the consumer when the token source has no full window yet (streamed text).
WAITING = _Waiting()

#: What ``generate()`` yields and a batched stream returns: a latent, or :data:`WAITING`.
StreamItem = SpeechLatent | _Waiting


# -- the state machine ---------------------------------------------------------------------


class NextStep(Enum):
    """What the loop does next; the answer of :meth:`Utterance.next_step`."""

    WAIT_FOR_TEXT = "wait for text"
    READ_WINDOW = "read a text window"
    SPEAK = "speak a latent"
    LISTEN = "listen to the spoken latent"
    END = "end"


class _Phase(Enum):
    """Where an utterance stands between two steps."""

    TAKE_TEXT = "a text window is due"
    READ = "a window was taken, not read yet"
    SPEECH = "within a speech window, before a latent"
    LISTEN = "a latent was spoken, not listened to yet"
    ENDED = "ended"


class Utterance:
    """One utterance being generated: its caches, its model steps and the loop rules.

    The *rules* are :meth:`next_step` (what comes next: wait for text, read a window,
    speak, listen or end, with the stop request, latent cap, trailing rule and position
    limit checked there), :meth:`spoken` (a latent was spoken) and :meth:`heard` (the
    listen step gave this EOS logit). The *model steps* of one utterance are
    :meth:`read_window` / :meth:`read_text`, :meth:`speak` and :meth:`listen`; a batching
    driver may run speak and listen for many utterances at once instead and report the
    results through :meth:`spoken`, :attr:`positive` / :attr:`negative` and :meth:`heard`.

    Every model step runs under its own ``torch.inference_mode``: grad mode is
    thread-local and a generator may resume on another worker thread, so a mode entered
    around a ``yield`` would not hold after it.
    """

    @torch.inference_mode()
    def __init__(
        self,
        model: Any,
        preset: Any,
        tokens: TokenSource,
        settings: GenerationSettings | None = None,
        noise: NoiseSource | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (  # noqa: E501
            VibeVoiceAcousticTokenizerConv1dPaddingCache,
        )

        upper_cfg = model.tts_language_model.config
        self.model = model
        self.tokens = tokens
        self.settings = settings or GenerationSettings()
        self.noise = noise or TorchNoise(device=model.device)
        self._stopped = stopped or (lambda: False)
        # Model state: fresh caches from the preset (the preset itself is never modified).
        self.lm_cache = preset.lm.make_cache(model.language_model.config)
        self.tts_cache = preset.tts_lm.make_cache(upper_cfg)
        self.neg_cache = preset.neg_tts_lm.make_cache(upper_cfg)
        #: Conditions of the next latent, [1, H] each: the last upper-LM hidden states of
        #: the positive and negative streams (set by the read and listen steps).
        self.positive = preset.tts_lm.last_hidden_state[:, -1, :]
        self.negative = preset.neg_tts_lm.last_hidden_state[:, -1, :]
        self.decoder_cache = VibeVoiceAcousticTokenizerConv1dPaddingCache()
        self._scheduler: Any = None  # made on the first single-utterance speak
        # Loop state.
        self._phase = _Phase.TAKE_TEXT
        self._window_ids: list[int] = []  # the window taken, to be read
        self._consumed = 0  # text tokens read through the LMs
        self._span = (0, 0)  # token range of the current window
        self._text_done = False  # the last window (short or empty) was taken
        self._window = 0  # current window number
        self._step = 0  # speech step within the window
        self._index = 0  # latents spoken
        self._finished = False  # EOS seen
        self._spoken: SpeechLatent | None = None  # the latent the listen step is for

    # -- state ----------------------------------------------------------------------------

    @property
    def positions(self) -> int:
        """Upper-LM positions used so far."""
        return self.tts_cache.get_seq_length()

    @property
    def ended(self) -> bool:
        """True once the utterance is over (EOS, cap, limit, stop or empty text)."""
        return self._phase is _Phase.ENDED

    @property
    def latent_to_listen(self) -> torch.Tensor:
        """The spoken latent [1, vae] that the pending listen step feeds back."""
        self._expect(_Phase.LISTEN, "latent_to_listen")
        assert self._spoken is not None
        return self._spoken.latent

    # -- the rules ------------------------------------------------------------------------

    def next_step(self) -> NextStep:
        """What the loop does next; takes the next text window when one is due.

        The stop request is checked first, on every call: a driver asks before every
        step, so a stop is seen before every latent and right after one was handed out.
        ``WAIT_FOR_TEXT`` changes nothing: asking again later retries the same window.
        """
        if self._phase is _Phase.ENDED:
            return NextStep.END
        if self._stopped():
            return self._end()
        if self._phase is _Phase.TAKE_TEXT:
            ids = self.tokens.take(TEXT_WINDOW)
            if ids is None:
                return NextStep.WAIT_FOR_TEXT
            self._start_window(ids)
        if self._phase is _Phase.READ:
            return NextStep.READ_WINDOW
        if self._phase is _Phase.SPEECH:
            return self._may_speak()
        if self._phase is _Phase.LISTEN:
            return NextStep.LISTEN
        return NextStep.END

    def spoken(
        self, latent: torch.Tensor, audio: np.ndarray, condition: torch.Tensor
    ) -> SpeechLatent:
        """A latent was spoken (sampled from ``condition`` and decoded): its item."""
        self._expect(_Phase.SPEECH, "spoken")
        item = SpeechLatent(
            index=self._index,
            window=self._window,
            latent=latent,
            audio=audio,
            tokens=self._span,
            kept=not self._finished,
            condition=condition,
        )
        self._index += 1
        self._spoken = item
        self._phase = _Phase.LISTEN
        return item

    def heard(self, eos_logit: float) -> None:
        """The listen step gave this EOS logit: the EOS rule and the window bookkeeping."""
        self._expect(_Phase.LISTEN, "heard")
        assert self._spoken is not None
        self._spoken.eos_logit = eos_logit
        if eos_logit > 0 and not self._finished:  # sigmoid(logit) > 0.5
            self._finished = True
            if not self.settings.complete_window_after_eos:
                self._phase = _Phase.ENDED
                return
        self._step += 1
        if self._step < SPEECH_WINDOW:
            self._phase = _Phase.SPEECH
        elif self._finished:
            self._phase = _Phase.ENDED
        else:
            self._window += 1
            self._phase = _Phase.TAKE_TEXT

    def _start_window(self, ids: list[int]) -> None:
        """A text window was taken: plan its read, or go on to trailing speech, or end."""
        self._span = (self._consumed, self._consumed + len(ids))
        self._step = 0
        if len(ids) < TEXT_WINDOW:
            self._text_done = True
        if not ids:
            # Nothing at all to say (empty text), or the text ended at a window edge.
            self._phase = _Phase.ENDED if self._consumed == 0 else _Phase.SPEECH
        elif not self._over_position_limit(len(ids)):
            self._window_ids = ids
            self._phase = _Phase.READ

    def _may_speak(self) -> NextStep:
        """The latent cap, the trailing rule and the position limit before a latent."""
        cap = self.settings.max_latents
        if cap is None and self._text_done:
            cap = TRAILING_BASE + TRAILING_PER_TOKEN * self._consumed
        if cap is not None and self._index >= cap:
            if self.settings.max_latents is None:
                logger.warning(f"VibeVoice: no EOS after {self._index} latents, stopping")
            return self._end()
        if self._over_position_limit(1):
            return NextStep.END
        return NextStep.SPEAK

    def _over_position_limit(self, more: int) -> bool:
        """True (and ended) when ``more`` upper-LM positions would pass the model's limit."""
        limit = self.model.config.max_positions
        if self.positions + more <= limit:
            return False
        logger.warning(f"VibeVoice: position limit {limit} reached")
        self._phase = _Phase.ENDED
        return True

    def _end(self) -> NextStep:
        self._phase = _Phase.ENDED
        return NextStep.END

    def _expect(self, phase: _Phase, what: str) -> None:
        if self._phase is not phase:
            raise RuntimeError(f"Utterance.{what} called while {self._phase.value!r}")

    # -- model steps of this one utterance ------------------------------------------------

    def read_window(self) -> None:
        """``READ_WINDOW``: run the window :meth:`next_step` took through both LMs."""
        self._expect(_Phase.READ, "read_window")
        self.read_text(self._window_ids)
        self._consumed += len(self._window_ids)
        self._phase = _Phase.SPEECH

    @torch.inference_mode()
    def read_text(self, ids: list[int]) -> None:
        """Run text ids through both LMs; the last hidden state becomes the positive condition."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        hidden = self.model.forward_text(input_ids, self.lm_cache, self.tts_cache)
        self.positive = hidden[:, -1, :]

    @torch.inference_mode()
    def speak(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """Sample and decode one latent: (latent [1, vae], audio, condition [2, H]).

        Uses this utterance's own scheduler and noise; pass the result to :meth:`spoken`.
        """
        if self._scheduler is None:
            self._scheduler = make_scheduler(self.model, self.settings)
        condition = torch.cat([self.positive, self.negative], dim=0)
        latent = sample_latent(self.model, self._scheduler, condition, self.settings, self.noise)
        audio = self.model.decode(latent[:, None, :], self.decoder_cache)
        return latent, audio[0].float().cpu().numpy(), condition

    @torch.inference_mode()
    def listen(self, latent: torch.Tensor) -> float:
        """Feed a latent back into both upper-LM streams; return the EOS logit.

        Pass the result to :meth:`heard`.
        """
        model = self.model
        embeds = model.connect(latent[:, None, :].to(model.dtype))
        self.positive = model.forward_speech(embeds, self.tts_cache)[:, -1, :]
        self.negative = model.forward_speech(embeds, self.neg_cache)[:, -1, :]
        return float(model.eos_logit(self.positive[:, None, :]).float()[0])
