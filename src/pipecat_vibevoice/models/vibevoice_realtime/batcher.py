"""Continuous batching of VibeVoice utterances: one model step serves every active stream.

:func:`.generation.generate` runs one utterance per executor thread, so N concurrent
streams make N small model calls per latent. The :class:`VibeVoiceBatcher` owns the
model in one worker thread and runs *ticks*; per tick:

1. each utterance asks its :meth:`~.utterance.Utterance.next_step` and, at the start of
   a speech window, reads its next text window (per utterance: text windows are rare
   and of different lengths);
2. one batched ``speak`` for every utterance whose next step is ``SPEAK``: the diffusion
   head runs on all their conditions at once (grouped by ``inference_steps``/
   ``algorithm``), then each latent is decoded with its utterance's own streaming
   decoder cache;
3. each latent goes to its utterance's queue;
4. one batched ``listen`` for those whose next step is then ``LISTEN`` (not stopped
   meanwhile): connector plus one ragged upper-LM step for all positive and negative
   caches (:mod:`.batching`).

Utterances join and leave between ticks. The loop rules (EOS, cap, trailing rule,
position limit, stop, text windows) are the utterance's own, the very
:class:`~.utterance.Utterance` that ``generate`` drives; only its model calls are
batched here. So every utterance behaves exactly as ``generate`` alone with the same
noise source (same latents, same stop step, the same :data:`~.utterance.WAITING` items).

Pacing is pull-driven like the generator: an utterance takes part in a tick only once
its consumer has taken the previous item, so at most one latent is computed ahead of
the consumer and a stop request is seen before the next latent. An utterance waiting for
streamed text sits out until its consumer asks again (after new text arrived).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from loguru import logger

from .batching import decode_each, listen_batch, sample_latents
from .noise import NoiseSource, TorchNoise
from .sampling import make_scheduler
from .settings import GenerationSettings
from .token_sources import TokenSource
from .utterance import WAITING, NextStep, StreamItem, Utterance

_END = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed while an utterance was still running or queued."""


@dataclass
class _Failure:
    """An exception raised by a model step, handed to the utterance's consumer."""

    error: BaseException


@dataclass(eq=False)
class _Submission:
    """One submitted utterance inside the batcher: its inputs, delivery queue and pacing.

    Its :class:`Utterance` (the caches) is made by :meth:`open` on the worker thread when
    it first takes part in a tick, so queued utterances hold no caches and every model
    step runs on the thread that owns the model.
    """

    number: int
    preset: Any
    tokens: TokenSource
    settings: GenerationSettings | None
    noise: NoiseSource
    stop: threading.Event | None
    items: queue.Queue = field(default_factory=queue.Queue)
    utterance: Utterance | None = None
    undelivered: int = 0  # items in ``items`` the consumer has not taken yet
    parked: bool = False  # waiting for streamed text until the consumer asks again
    cancelled: bool = False
    done: bool = False

    def stopped(self) -> bool:
        """Stop asked for (event) or the consumer went away (cancel)."""
        return self.cancelled or (self.stop is not None and self.stop.is_set())

    def open(self, model: Any) -> Utterance:
        """The utterance, made on first use; it sees a cancel as a stop request."""
        if self.utterance is None:
            self.utterance = Utterance(
                model, self.preset, self.tokens, self.settings, self.noise, self.stopped
            )
        return self.utterance


#: A submission in a tick, with its (opened) utterance.
_Speaker = tuple[_Submission, Utterance]


class BatchedStream(Iterator[StreamItem]):
    """The consumer side of a submitted utterance: iterate it like ``generate()``.

    ``next()`` blocks until the utterance's next item; step errors are re-raised here.
    After a :data:`WAITING` item the utterance sits out until ``next()`` is called
    again. :meth:`close` (or dropping out of a ``for`` loop via ``close``) removes it
    from the batch before its next latent.
    """

    def __init__(self, batcher: VibeVoiceBatcher, submission: _Submission) -> None:
        self._batcher = batcher
        self._submission = submission
        self._resume = False
        self._ended = False

    def __next__(self) -> StreamItem:
        if self._ended:
            raise StopIteration
        if self._resume:
            self._resume = False
            self._batcher._resume(self._submission)
        item = self._submission.items.get()
        self._batcher._taken(self._submission)
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._ended = True
            raise item.error
        if item is WAITING:
            self._resume = True
        return item

    def close(self) -> None:
        """Leave the batch (idempotent); no further latent is started for it."""
        self._ended = True
        self._batcher._cancel(self._submission)


class VibeVoiceBatcher:
    """One worker thread that steps up to ``max_batch`` utterances together.

    Utterances beyond ``max_batch`` wait in FIFO order and join when one leaves. The
    thread sleeps on a condition variable when nothing can run. :meth:`close` stops it;
    utterances still running then get :class:`BatcherClosed`.
    """

    def __init__(self, model: Any, max_batch: int = 8, name: str = "vibevoice-batch") -> None:
        if not 1 <= max_batch <= 64:
            raise ValueError(f"max_batch must be within 1..64, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._pending: deque[_Submission] = deque()
        self._active: list[_Submission] = []
        self._closed = False
        self._numbers = itertools.count()
        self._schedulers: dict[tuple[int, str], Any] = {}
        self.ticks = 0
        self.last_batch_size = 0
        self.peak_batch_size = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------------------

    def submit(
        self,
        preset: Any,
        tokens: TokenSource,
        settings: GenerationSettings | None = None,
        noise: NoiseSource | None = None,
        stop: threading.Event | None = None,
    ) -> BatchedStream:
        """Queue an utterance (``preset`` on the model's device and dtype); returns its items."""
        submission = _Submission(
            number=next(self._numbers),
            preset=preset,
            tokens=tokens,
            settings=settings,
            noise=noise or TorchNoise(device=self.model.device),
            stop=stop,
        )
        with self._cv:
            if self._closed:
                raise BatcherClosed("VibeVoice batcher is closed")
            self._pending.append(submission)
            self._cv.notify_all()
        return BatchedStream(self, submission)

    @property
    def active(self) -> int:
        """Utterances admitted to the batch now."""
        with self._cv:
            return len(self._active)

    @property
    def queued(self) -> int:
        """Utterances waiting for a free place in the batch."""
        with self._cv:
            return len(self._pending)

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def describe(self) -> dict[str, Any]:
        """Numbers for health checks."""
        with self._cv:
            return {
                "max_batch": self.max_batch,
                "batch_size": self.last_batch_size,
                "peak_batch_size": self.peak_batch_size,
                "active_utterances": len(self._active),
                "queued_utterances": len(self._pending),
            }

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker after its current tick; unfinished utterances get an error."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        with self._cv:
            left = [*self._active, *self._pending]
            self._active.clear()
            self._pending.clear()
        for submission in left:
            self._deliver_failure(submission, BatcherClosed("VibeVoice batcher closed"))

    # -- consumer callbacks -------------------------------------------------------------

    def _taken(self, sub: _Submission) -> None:
        with self._cv:
            sub.undelivered = max(0, sub.undelivered - 1)
            self._cv.notify_all()

    def _resume(self, sub: _Submission) -> None:
        with self._cv:
            sub.parked = False
            self._cv.notify_all()

    def _cancel(self, sub: _Submission) -> None:
        with self._cv:
            sub.cancelled = True
            if sub in self._pending:
                self._pending.remove(sub)
                sub.done = True
            self._cv.notify_all()

    # -- worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        # Grad mode is thread-local: this thread does every model step of the batch.
        with torch.inference_mode():
            while True:
                subs = self._wait_for_work()
                if subs is None:
                    return
                try:
                    self._tick(subs)
                except Exception as exc:  # never lose the thread; tell who was in the tick
                    logger.exception(f"VibeVoice batch tick failed: {exc!r}")
                    for sub in subs:
                        if not sub.done:
                            self._fail(sub, exc)

    def _wait_for_work(self) -> list[_Submission] | None:
        """Admit queued utterances, then return those that can act now (None: closed)."""
        with self._cv:
            while True:
                if self._closed:
                    return None
                while self._pending and len(self._active) < self.max_batch:
                    self._active.append(self._pending.popleft())
                ready = [s for s in self._active if self._can_act(s)]
                if ready:
                    return ready
                self._cv.wait()

    @staticmethod
    def _can_act(sub: _Submission) -> bool:
        if sub.cancelled:
            return True  # to be dropped
        return not sub.parked and sub.undelivered == 0

    def _tick(self, subs: list[_Submission]) -> None:
        speakers = []
        for sub in subs:
            try:
                utterance = sub.open(self.model)
                step = self._step_to_speech(utterance)
            except Exception as exc:
                self._fail(sub, exc)
                continue
            if step is NextStep.SPEAK:
                speakers.append((sub, utterance))
            elif step is NextStep.WAIT_FOR_TEXT:
                sub.parked = True
                self._push(sub, WAITING)
            elif step is NextStep.END:
                self._finish(sub)
            else:
                self._fail(sub, RuntimeError(f"VibeVoice utterance at {step} between ticks"))
        self.ticks += 1
        self.last_batch_size = len(speakers)
        self.peak_batch_size = max(self.peak_batch_size, len(speakers))
        if speakers:
            spoken = self._speak(speakers)
            if spoken:
                self._listen(spoken)

    @staticmethod
    def _step_to_speech(utterance: Utterance) -> NextStep:
        """Run one utterance up to its next latent: read a text window if one is due."""
        step = utterance.next_step()
        while step is NextStep.READ_WINDOW:
            utterance.read_window()
            step = utterance.next_step()
        return step

    # -- batched steps --------------------------------------------------------------------

    def _scheduler(self, settings: GenerationSettings) -> Any:
        key = (settings.inference_steps, settings.algorithm)
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = self._schedulers[key] = make_scheduler(self.model, settings)
        return scheduler

    def _speak(self, speakers: list[_Speaker]) -> list[_Speaker]:
        """Sample (per solver group) and decode one latent for each utterance; push them."""
        groups: dict[tuple[int, str], list[_Speaker]] = {}
        for sub, utterance in speakers:
            key = (utterance.settings.inference_steps, utterance.settings.algorithm)
            groups.setdefault(key, []).append((sub, utterance))
        spoken = []
        for (steps, algorithm), group in groups.items():
            utterances = [u for _, u in group]
            try:
                positive = torch.cat([u.positive for u in utterances], dim=0)
                negative = torch.cat([u.negative for u in utterances], dim=0)
                latents = sample_latents(
                    self.model,
                    self._scheduler(utterances[0].settings),
                    positive,
                    negative,
                    [u.settings.cfg_scale for u in utterances],
                    steps,
                    algorithm,
                    [u.noise for u in utterances],
                )
                audio = decode_each(self.model, latents, [u.decoder_cache for u in utterances])
            except Exception as exc:
                logger.exception(f"VibeVoice batched speak failed for {len(group)} utterances")
                for sub, _ in group:
                    self._fail(sub, exc)
                continue
            for row, (sub, utterance) in enumerate(group):
                condition = torch.stack([positive[row], negative[row]])
                item = utterance.spoken(latents[row : row + 1], audio[row], condition)
                self._push(sub, item)
                spoken.append((sub, utterance))
        return spoken

    def _listen(self, spoken: list[_Speaker]) -> None:
        """One batched LM step for every utterance whose next step is still ``LISTEN``."""
        listeners = []
        for sub, utterance in spoken:
            if utterance.next_step() is NextStep.LISTEN:
                listeners.append((sub, utterance))
            else:  # stopped since its latent was started
                self._finish(sub)
        if not listeners:
            return
        utterances = [u for _, u in listeners]
        try:
            latents = torch.cat([u.latent_to_listen for u in utterances], dim=0)
            positive, negative, eos = listen_batch(
                self.model,
                latents,
                [u.tts_cache for u in utterances],
                [u.neg_cache for u in utterances],
            )
        except Exception as exc:
            logger.exception(f"VibeVoice batched listen failed for {len(listeners)} utterances")
            for sub, _ in listeners:
                self._fail(sub, exc)
            return
        for row, (sub, utterance) in enumerate(listeners):
            utterance.positive = positive[row : row + 1]
            utterance.negative = negative[row : row + 1]
            utterance.heard(float(eos[row]))
            if utterance.ended:
                self._finish(sub)

    # -- delivery -------------------------------------------------------------------------

    def _push(self, sub: _Submission, item: Any) -> None:
        with self._cv:
            sub.undelivered += 1
        sub.items.put(item)

    def _finish(self, sub: _Submission) -> None:
        """The utterance ended (EOS, cap, stop, empty text): free its place."""
        self._leave(sub)
        sub.items.put(_END)

    def _fail(self, sub: _Submission, error: BaseException) -> None:
        self._leave(sub)
        sub.items.put(_Failure(error))

    def _deliver_failure(self, sub: _Submission, error: BaseException) -> None:
        if not sub.done:
            sub.done = True
            sub.items.put(_Failure(error))

    def _leave(self, sub: _Submission) -> None:
        with self._cv:
            sub.done = True
            sub.utterance = None  # drop the caches now, not when the consumer lets go
            if sub in self._active:
                self._active.remove(sub)
            self._cv.notify_all()
