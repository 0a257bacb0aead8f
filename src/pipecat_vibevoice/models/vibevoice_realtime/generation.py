"""The streaming generation loop of VibeVoice-Realtime, one latent at a time.

Order per utterance (the official loop, see the fixture README): text arrives in
windows of :data:`TEXT_WINDOW` tokens; each window runs the lower and upper LM, then
:data:`SPEECH_WINDOW` speech steps follow. A speech step samples one latent with
DPM-Solver++ and classifier-free guidance, decodes it to 3 200 samples with the
streaming decoder, feeds it back through the connector into the positive and negative
upper-LM streams, and checks EOS.

Differences from the official ``generate`` (all deliberate):

* It is a generator that yields after every decoded latent, before the LM steps that
  prepare the next one, so the first chunk is not held back and a stop request is seen
  before every latent (the official loop polls once per window, ~0.8 s of audio).
* Text comes from a :class:`TokenSource` that may not have the next window yet
  (streaming text input): the loop then yields :data:`WAITING` and resumes later.
* After EOS the official loop finishes the current window (and discards its audio); we
  stop at once unless ``complete_window_after_eos`` is set (used by the parity tests).
* Noise comes from a :class:`NoiseSource`, so tests can replay the official draws.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from loguru import logger

TEXT_WINDOW = 5
SPEECH_WINDOW = 6
#: After the text runs out, speech may continue (the model lags the text); this caps it
#: at ``TRAILING_BASE + TRAILING_PER_TOKEN · tokens`` latents in total, far beyond any
#: real speaking rate (3 latents = 0.4 s per token), so a model that never says EOS
#: cannot talk forever.
TRAILING_BASE = 30
TRAILING_PER_TOKEN = 3


# -- noise ----------------------------------------------------------------------------------


class NoiseSource(Protocol):
    """Gaussian draws for the sampler, in the order the official loop makes them."""

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 standard-normal tensor of ``shape`` on ``device``."""
        ...


class TorchNoise:
    """Draws from a private ``torch.Generator`` (seeded per utterance if asked)."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randn(
            shape, generator=self.generator, device=self.generator.device, dtype=torch.float32
        ).to(device)


class RecordedNoise:
    """Replays recorded draws (e.g. the fixture's ``noise.npy`` [N, D, 2, vae]) in order.

    The official sampler draws [2, vae] and only row 0 matters; a draw of shape
    (1, vae) returns that row.
    """

    def __init__(self, draws: np.ndarray) -> None:
        flat = np.asarray(draws, dtype=np.float32)
        self._draws = flat.reshape(-1, *flat.shape[-2:])
        self.used = 0

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.used >= len(self._draws):
            raise IndexError(f"recorded noise exhausted after {self.used} draws")
        value = torch.from_numpy(self._draws[self.used][: shape[0]].copy())
        self.used += 1
        return value.reshape(shape).to(device)


# -- text ----------------------------------------------------------------------------------


class TokenSource(Protocol):
    """Where the loop takes its text windows from."""

    def take(self, n: int) -> list[int] | None:
        """Up to ``n`` next token ids; ``[]`` when the text is finished; ``None`` to wait.

        Fewer than ``n`` ids only at the very end of the text.
        """
        ...


class FixedTokens:
    """A whole, known token sequence."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)
        self.position = 0

    def take(self, n: int) -> list[int] | None:
        window = self.ids[self.position : self.position + n]
        self.position += len(window)
        return window


Encoder = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


class TextTokenStream:
    """Growing text → token windows identical to tokenizing the whole text at once.

    BPE tokenisation of a prefix can differ from that of the whole text at the cut, so
    text is committed only up to a *safe cut*: a single space between two non-space
    characters. Qwen2's pre-tokenizer never lets a piece cross such a space from the
    left (the space starts the next word's piece), so tokenising committed pieces one by
    one gives exactly the whole text's tokens. At the end the rest is committed with the
    trailing newline the official processor appends (``text.strip() + "\\n"``).

    ``read`` returns ``(text_so_far, finished)``; it is the thread-safe text hand-over
    from the engine (see ``TextSource``), or a constant for a whole string.
    """

    def __init__(self, encode: Encoder, read: Callable[[], tuple[str, bool]]) -> None:
        self._encode = encode
        self._read = read
        self.ids: list[int] = []
        self.offsets: list[tuple[int, int]] = []
        self._committed = 0  # characters of text already tokenised
        self._start: int | None = None  # leading whitespace is dropped (strip)
        self._finished = False
        self.position = 0
        self.text = ""

    @classmethod
    def whole(cls, encode: Encoder, text: str) -> TextTokenStream:
        """A stream over a complete text."""
        return cls(encode, lambda: (text, True))

    def _commit(self, upto: int, suffix: str = "") -> None:
        piece = self.text[self._committed : upto] + suffix
        if piece:
            ids, offsets = self._encode(piece)
            base = self._committed
            self.ids.extend(ids)
            self.offsets.extend((base + s, base + e) for s, e in offsets)
        self._committed = upto

    def _refresh(self) -> None:
        if self._finished:
            return
        text, finished = self._read()
        self.text = text
        if self._start is None:
            stripped = len(text) - len(text.lstrip())
            if stripped == len(text) and not finished:
                return  # only whitespace so far
            self._start = stripped
            self._committed = stripped
        if finished:
            end = len(text.rstrip())
            self._finished = True
            if end > (self._start or 0):  # else: no speakable text at all
                # The rest goes with the newline the official processor appends, in one
                # piece (punctuation absorbs a following newline in Qwen2's split).
                self._commit(end, suffix="\n")
            return
        cut = _last_safe_cut(text, self._committed)
        if cut > self._committed:
            self._commit(cut)

    def take(self, n: int) -> list[int] | None:
        if len(self.ids) - self.position < n:
            self._refresh()
        available = len(self.ids) - self.position
        if available < n and not self._finished:
            return None
        window = self.ids[self.position : self.position + n]
        self.position += len(window)
        return window

    def char_span(self, start: int, end: int) -> tuple[int, int] | None:
        """Character range of the text covered by tokens ``[start, end)``."""
        if end <= start or start >= len(self.offsets):
            return None
        limit = len(self.text.rstrip())
        s = min(self.offsets[start][0], limit)
        e = min(max(o[1] for o in self.offsets[start:end]), limit)
        return (s, max(s, e))


def _last_safe_cut(text: str, after: int) -> int:
    """Index of the last space with non-space characters on both sides, past ``after``."""
    index = len(text) - 2
    while index > after:
        if text[index] == " " and not text[index - 1].isspace() and not text[index + 1].isspace():
            return index
        index -= 1
    return after


# -- the loop ------------------------------------------------------------------------------


@dataclass
class GenerationSettings:
    """Knobs of one utterance."""

    cfg_scale: float = 1.5
    inference_steps: int = 5
    #: ``sde-dpmsolver++`` (official streaming demo) or ``dpmsolver++`` (file demo).
    algorithm: str = "sde-dpmsolver++"
    #: Hard cap on latents; ``None`` uses the trailing rule (see TRAILING_*).
    max_latents: int | None = None
    #: Reproduce the official loop exactly: after EOS, finish the window (not kept).
    complete_window_after_eos: bool = False


@dataclass
class SpeechLatent:
    """One generated latent and its audio.

    ``eos_logit`` is filled in when the generator resumes after yielding this latent
    (the EOS check needs the LM step that follows the decode); it stays ``None`` if the
    consumer stops first.
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


#: Yielded when the token source has no full window yet (streaming text input).
WAITING = _Waiting()


def sample_latent(
    model: Any,
    scheduler: Any,
    condition: torch.Tensor,
    settings: GenerationSettings,
    noise: NoiseSource,
) -> torch.Tensor:
    """One latent [1, vae] (float32) by DPM-Solver++ with classifier-free guidance.

    ``condition`` is [2, H]: positive, negative. The head runs on the same noisy sample
    for both rows; the guided velocity ``u + s·(c − u)`` drives the scheduler.
    """
    device = model.device
    vae = model.config.acoustic_vae_dim
    sample = noise.draw((1, vae), device)
    scheduler.set_timesteps(settings.inference_steps)
    sde = settings.algorithm.startswith("sde")
    for t in scheduler.timesteps:
        timesteps = t.to(device=device, dtype=torch.float32).expand(2)
        out = model.predict(sample.to(model.dtype).expand(2, -1), timesteps, condition)
        out = out.to(solver_dtype(out.dtype))
        guided = out[1:] + settings.cfg_scale * (out[:1] - out[1:])
        extra = {"variance_noise": noise.draw((1, vae), device)} if sde else {}
        sample = scheduler.step(guided, t, sample, **extra).prev_sample
    return sample


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the guidance and solver work in: at least float32 (bf16 models upcast)."""
    return torch.promote_types(dtype, torch.float32)


def make_scheduler(model: Any, settings: GenerationSettings) -> Any:
    """A fresh diffusers DPM-Solver++ scheduler (they are stateful: one per utterance)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**model.config.scheduler_kwargs(settings.algorithm))


class _Utterance:
    """The per-utterance state of :func:`generate` and its model steps.

    Every step runs under its own ``torch.inference_mode``: grad mode is thread-local
    and a generator may resume on another worker thread, so a mode entered around a
    ``yield`` would not hold after it.
    """

    @torch.inference_mode()
    def __init__(self, model: Any, preset: Any, settings: GenerationSettings) -> None:
        from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (  # noqa: E501
            VibeVoiceAcousticTokenizerConv1dPaddingCache,
        )

        upper_cfg = model.tts_language_model.config
        self.model = model
        self.settings = settings
        self.lm_cache = preset.lm.make_cache(model.language_model.config)
        self.tts_cache = preset.tts_lm.make_cache(upper_cfg)
        self.neg_cache = preset.neg_tts_lm.make_cache(upper_cfg)
        self.positive = preset.tts_lm.last_hidden_state[:, -1, :]
        self.negative = preset.neg_tts_lm.last_hidden_state[:, -1, :]
        self.decoder_cache = VibeVoiceAcousticTokenizerConv1dPaddingCache()
        self.scheduler = make_scheduler(model, settings)

    @property
    def positions(self) -> int:
        """Upper-LM positions used so far."""
        return self.tts_cache.get_seq_length()

    @torch.inference_mode()
    def read_text(self, ids: list[int]) -> None:
        """Run one text window through both LMs; it becomes the positive condition."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        hidden = self.model.forward_text(input_ids, self.lm_cache, self.tts_cache)
        self.positive = hidden[:, -1, :]

    @torch.inference_mode()
    def speak(self, noise: NoiseSource) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """Sample and decode one latent: (latent [1, vae], audio, condition [2, H])."""
        condition = torch.cat([self.positive, self.negative], dim=0)
        latent = sample_latent(self.model, self.scheduler, condition, self.settings, noise)
        audio = self.model.decode(latent[:, None, :], self.decoder_cache)
        return latent, audio[0].float().cpu().numpy(), condition

    @torch.inference_mode()
    def listen(self, latent: torch.Tensor) -> float:
        """Feed a latent back into both upper-LM streams; return the EOS logit."""
        model = self.model
        embeds = model.connect(latent[:, None, :].to(model.dtype))
        self.positive = model.forward_speech(embeds, self.tts_cache)[:, -1, :]
        self.negative = model.forward_speech(embeds, self.neg_cache)[:, -1, :]
        return float(model.eos_logit(self.positive[:, None, :]).float()[0])


def generate(
    model: Any,
    preset: Any,
    tokens: TokenSource,
    settings: GenerationSettings | None = None,
    noise: NoiseSource | None = None,
    stop: threading.Event | None = None,
) -> Iterator[SpeechLatent | _Waiting]:
    """Stream latents for the text of ``tokens`` in the voice of ``preset``.

    ``preset`` must already be on the model's device and dtype. Stops before the next
    latent once ``stop`` is set, at EOS, at the latent cap or at the model's position
    limit.
    """
    settings = settings or GenerationSettings()
    noise = noise or TorchNoise(device=model.device)
    stopped = stop.is_set if stop is not None else (lambda: False)
    max_positions = model.config.max_positions
    state = _Utterance(model, preset, settings)

    consumed = 0
    index = 0
    window = 0
    finished = False
    text_done = False
    while True:
        if stopped():
            return
        ids = tokens.take(TEXT_WINDOW)
        while ids is None:
            yield WAITING
            if stopped():
                return
            ids = tokens.take(TEXT_WINDOW)
        span = (consumed, consumed + len(ids))
        if ids:
            if state.positions + len(ids) > max_positions:
                logger.warning(f"VibeVoice: position limit {max_positions} reached")
                return
            state.read_text(ids)
            consumed += len(ids)
        elif consumed == 0:
            return  # nothing to say (empty text)
        else:
            text_done = True
        if len(ids) < TEXT_WINDOW:
            text_done = True
        for _ in range(SPEECH_WINDOW):
            if stopped():
                return
            cap = settings.max_latents
            if cap is None and text_done:
                cap = TRAILING_BASE + TRAILING_PER_TOKEN * consumed
            if cap is not None and index >= cap:
                if settings.max_latents is None:
                    logger.warning(f"VibeVoice: no EOS after {index} latents, stopping")
                return
            if state.positions + 1 > max_positions:
                logger.warning(f"VibeVoice: position limit {max_positions} reached")
                return
            latent, audio, condition = state.speak(noise)
            item = SpeechLatent(
                index=index,
                window=window,
                latent=latent,
                audio=audio,
                tokens=span,
                kept=not finished,
                condition=condition,
            )
            yield item
            index += 1
            if stopped():
                return
            item.eos_logit = state.listen(latent)
            if item.eos_logit > 0 and not finished:  # sigmoid(logit) > 0.5
                finished = True
                if not settings.complete_window_after_eos:
                    return
        if finished:
            return
        window += 1
