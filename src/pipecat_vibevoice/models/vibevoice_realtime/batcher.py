"""Continuous batching of VibeVoice utterances: one model step serves every active stream.

:func:`.generation.generate` runs one utterance per executor thread, so N concurrent
streams make N small model calls per latent. The :class:`VibeVoiceBatcher` owns the
model in one worker thread and runs *ticks*; per tick:

1. utterances at the start of a speech window read their next text window (per
   utterance: text windows are rare and of different lengths);
2. one batched ``speak`` for every ready utterance: the diffusion head runs on all their
   conditions at once (grouped by ``inference_steps``/``algorithm``), then each latent is
   decoded with its utterance's own streaming decoder cache;
3. each latent goes to its utterance's queue;
4. one batched ``listen``: connector plus one ragged upper-LM step for all positive and
   negative caches (:mod:`.batching`).

Utterances join and leave between ticks. Every utterance behaves exactly as
:func:`.generation.generate` alone with the same noise source (same latents, same EOS /
cap / stop step, the same :data:`~.generation.WAITING` items for streamed text): the
per-utterance state machine below is that loop, cut at its ``yield`` points.

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
from .generation import (
    SPEECH_WINDOW,
    TEXT_WINDOW,
    TRAILING_BASE,
    TRAILING_PER_TOKEN,
    WAITING,
    GenerationSettings,
    NoiseSource,
    SpeechLatent,
    TokenSource,
    TorchNoise,
    _Utterance,
    _Waiting,
    make_scheduler,
)

_END = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed while an utterance was still running or queued."""


@dataclass
class _Failure:
    """An exception raised by a model step, handed to the utterance's consumer."""

    error: BaseException


@dataclass(eq=False)
class _Job:
    """One utterance inside the batcher: its inputs, model state and loop position."""

    number: int
    preset: Any
    tokens: TokenSource
    settings: GenerationSettings
    noise: NoiseSource
    stop: threading.Event | None
    items: queue.Queue = field(default_factory=queue.Queue)
    state: _Utterance | None = None
    undelivered: int = 0  # items in ``items`` the consumer has not taken yet
    parked: bool = False  # waiting for streamed text until the consumer asks again
    cancelled: bool = False
    done: bool = False
    in_speech: bool = False  # False: the next thing to do is reading a text window
    step: int = 0  # speech step within the window
    consumed: int = 0
    index: int = 0
    window: int = 0
    span: tuple[int, int] = (0, 0)
    finished: bool = False  # EOS seen
    text_done: bool = False

    def stopped(self) -> bool:
        """Stop asked for (event) or the consumer went away (cancel)."""
        return self.cancelled or (self.stop is not None and self.stop.is_set())


class BatchedUtterance(Iterator[SpeechLatent | _Waiting]):
    """The consumer side of a submitted utterance: iterate it like ``generate()``.

    ``next()`` blocks until the utterance's next item; step errors are re-raised here.
    After a :data:`WAITING` item the utterance sits out until ``next()`` is called
    again. :meth:`close` (or dropping out of a ``for`` loop via ``close``) removes it
    from the batch before its next latent.
    """

    def __init__(self, batcher: VibeVoiceBatcher, job: _Job) -> None:
        self._batcher = batcher
        self._job = job
        self._resume = False
        self._ended = False

    def __next__(self) -> SpeechLatent | _Waiting:
        if self._ended:
            raise StopIteration
        if self._resume:
            self._resume = False
            self._batcher._resume(self._job)
        item = self._job.items.get()
        self._batcher._taken(self._job)
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
        self._batcher._cancel(self._job)


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
        self._pending: deque[_Job] = deque()
        self._active: list[_Job] = []
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
    ) -> BatchedUtterance:
        """Queue an utterance (``preset`` on the model's device and dtype); returns its items."""
        job = _Job(
            number=next(self._numbers),
            preset=preset,
            tokens=tokens,
            settings=settings or GenerationSettings(),
            noise=noise or TorchNoise(device=self.model.device),
            stop=stop,
        )
        with self._cv:
            if self._closed:
                raise BatcherClosed("VibeVoice batcher is closed")
            self._pending.append(job)
            self._cv.notify_all()
        return BatchedUtterance(self, job)

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
        for job in left:
            self._deliver_failure(job, BatcherClosed("VibeVoice batcher closed"))

    # -- consumer callbacks -------------------------------------------------------------

    def _taken(self, job: _Job) -> None:
        with self._cv:
            job.undelivered = max(0, job.undelivered - 1)
            self._cv.notify_all()

    def _resume(self, job: _Job) -> None:
        with self._cv:
            job.parked = False
            self._cv.notify_all()

    def _cancel(self, job: _Job) -> None:
        with self._cv:
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                job.done = True
            self._cv.notify_all()

    # -- worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        # Grad mode is thread-local: this thread does every model step of the batch.
        with torch.inference_mode():
            while True:
                jobs = self._wait_for_work()
                if jobs is None:
                    return
                try:
                    self._tick(jobs)
                except Exception as exc:  # never lose the thread; tell who was in the tick
                    logger.exception(f"VibeVoice batch tick failed: {exc!r}")
                    for job in jobs:
                        if not job.done:
                            self._fail(job, exc)

    def _wait_for_work(self) -> list[_Job] | None:
        """Admit queued utterances, then return those that can act now (None: closed)."""
        with self._cv:
            while True:
                if self._closed:
                    return None
                while self._pending and len(self._active) < self.max_batch:
                    self._active.append(self._pending.popleft())
                ready = [j for j in self._active if self._can_act(j)]
                if ready:
                    return ready
                self._cv.wait()

    @staticmethod
    def _can_act(job: _Job) -> bool:
        if job.cancelled:
            return True  # to be dropped
        return not job.parked and job.undelivered == 0

    def _tick(self, jobs: list[_Job]) -> None:
        speakers = []
        for job in jobs:
            try:
                if self._prepare(job):
                    speakers.append(job)
            except Exception as exc:
                self._fail(job, exc)
        self.ticks += 1
        self.last_batch_size = len(speakers)
        self.peak_batch_size = max(self.peak_batch_size, len(speakers))
        if speakers:
            spoken = self._speak(speakers)
            if spoken:
                self._listen(spoken)

    # -- one utterance's loop, cut at its yield points --------------------------------------

    def _prepare(self, job: _Job) -> bool:
        """Everything ``generate`` does before sampling the next latent; True if it speaks."""
        if job.stopped():
            self._finish(job)
            return False
        if job.state is None:
            job.state = _Utterance(self.model, job.preset, job.settings)
        if not job.in_speech and not self._read_window(job):
            return False
        return self._may_speak(job)

    def _read_window(self, job: _Job) -> bool:
        """Take and run the next text window; False when parked (WAITING) or done."""
        ids = job.tokens.take(TEXT_WINDOW)
        if ids is None:
            job.parked = True
            self._push(job, WAITING)
            return False
        job.span = (job.consumed, job.consumed + len(ids))
        if ids:
            limit = self.model.config.max_positions
            if job.state.positions + len(ids) > limit:
                logger.warning(f"VibeVoice: position limit {limit} reached")
                self._finish(job)
                return False
            job.state.read_text(ids)
            job.consumed += len(ids)
        elif job.consumed == 0:
            self._finish(job)  # nothing to say (empty text)
            return False
        else:
            job.text_done = True
        if len(ids) < TEXT_WINDOW:
            job.text_done = True
        job.in_speech = True
        job.step = 0
        return True

    def _may_speak(self, job: _Job) -> bool:
        """The latent cap, trailing rule and position limit of ``generate``."""
        cap = job.settings.max_latents
        if cap is None and job.text_done:
            cap = TRAILING_BASE + TRAILING_PER_TOKEN * job.consumed
        if cap is not None and job.index >= cap:
            if job.settings.max_latents is None:
                logger.warning(f"VibeVoice: no EOS after {job.index} latents, stopping")
            self._finish(job)
            return False
        limit = self.model.config.max_positions
        if job.state.positions + 1 > limit:
            logger.warning(f"VibeVoice: position limit {limit} reached")
            self._finish(job)
            return False
        return True

    def _after_listen(self, job: _Job, item: SpeechLatent, eos_logit: float) -> None:
        """EOS and window bookkeeping after the LM step that follows a latent."""
        item.eos_logit = eos_logit
        if eos_logit > 0 and not job.finished:  # sigmoid(logit) > 0.5
            job.finished = True
            if not job.settings.complete_window_after_eos:
                self._finish(job)
                return
        job.step += 1
        if job.step == SPEECH_WINDOW:
            if job.finished:
                self._finish(job)
                return
            job.window += 1
            job.in_speech = False

    # -- batched steps --------------------------------------------------------------------

    def _scheduler(self, settings: GenerationSettings) -> Any:
        key = (settings.inference_steps, settings.algorithm)
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = self._schedulers[key] = make_scheduler(self.model, settings)
        return scheduler

    def _speak(self, jobs: list[_Job]) -> list[tuple[_Job, SpeechLatent]]:
        """Sample (per solver group) and decode one latent for each job; push them."""
        groups: dict[tuple[int, str], list[_Job]] = {}
        for job in jobs:
            key = (job.settings.inference_steps, job.settings.algorithm)
            groups.setdefault(key, []).append(job)
        spoken = []
        for (steps, algorithm), group in groups.items():
            try:
                states = [j.state for j in group]
                positive = torch.cat([s.positive for s in states], dim=0)
                negative = torch.cat([s.negative for s in states], dim=0)
                latents = sample_latents(
                    self.model,
                    self._scheduler(group[0].settings),
                    positive,
                    negative,
                    [j.settings.cfg_scale for j in group],
                    steps,
                    algorithm,
                    [j.noise for j in group],
                )
                audio = decode_each(self.model, latents, [s.decoder_cache for s in states])
            except Exception as exc:
                logger.exception(f"VibeVoice batched speak failed for {len(group)} utterances")
                for job in group:
                    self._fail(job, exc)
                continue
            for row, job in enumerate(group):
                item = SpeechLatent(
                    index=job.index,
                    window=job.window,
                    latent=latents[row : row + 1],
                    audio=audio[row],
                    tokens=job.span,
                    kept=not job.finished,
                    condition=torch.stack([positive[row], negative[row]]),
                )
                self._push(job, item)
                job.index += 1
                spoken.append((job, item))
        return spoken

    def _listen(self, spoken: list[tuple[_Job, SpeechLatent]]) -> None:
        """One batched LM step for every job that spoke and was not stopped meanwhile."""
        listeners = []
        for job, item in spoken:
            if job.stopped():
                self._finish(job)
            else:
                listeners.append((job, item))
        if not listeners:
            return
        states = [job.state for job, _ in listeners]
        try:
            latents = torch.cat([item.latent for _, item in listeners], dim=0)
            positive, negative, eos = listen_batch(
                self.model,
                latents,
                [s.tts_cache for s in states],
                [s.neg_cache for s in states],
            )
        except Exception as exc:
            logger.exception(f"VibeVoice batched listen failed for {len(listeners)} utterances")
            for job, _ in listeners:
                self._fail(job, exc)
            return
        for row, (job, item) in enumerate(listeners):
            job.state.positive = positive[row : row + 1]
            job.state.negative = negative[row : row + 1]
            self._after_listen(job, item, float(eos[row]))

    # -- delivery -------------------------------------------------------------------------

    def _push(self, job: _Job, item: Any) -> None:
        with self._cv:
            job.undelivered += 1
        job.items.put(item)

    def _finish(self, job: _Job) -> None:
        """The utterance ended (EOS, cap, stop, empty text): free its place."""
        self._leave(job)
        job.items.put(_END)

    def _fail(self, job: _Job, error: BaseException) -> None:
        self._leave(job)
        job.items.put(_Failure(error))

    def _deliver_failure(self, job: _Job, error: BaseException) -> None:
        if not job.done:
            job.done = True
            job.items.put(_Failure(error))

    def _leave(self, job: _Job) -> None:
        with self._cv:
            job.done = True
            job.state = None  # drop the caches now, not when the consumer lets go
            if job in self._active:
                self._active.remove(job)
            self._cv.notify_all()
