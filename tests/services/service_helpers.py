"""Helpers for the service tests: count the model's work, time and read the service's frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from pipecat.frames.frames import Frame, MetricsFrame, TTSAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed

from pipecat_vibevoice.engine import TTSEngine


class PieceCounter:
    """Wraps the real backend's ``stream`` to time every piece of model work it yields.

    This is how the tests see the model itself (not just the frames) stop: a piece is
    stamped when the backend hands it over, in the worker thread that made it.
    """

    def __init__(self, engine: TTSEngine, fail_first: int = 0) -> None:
        self.backend = engine.backend
        self.original = self.backend.stream
        self.times: list[float] = []
        self.calls = 0
        self.exhausted = 0
        self.closed_early = 0
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def __enter__(self) -> PieceCounter:
        def stream(request):
            with self._lock:
                self.calls += 1
                fail = self.calls <= self.fail_first
            if fail:
                raise RuntimeError("injected backend fault")
            finished = False
            try:
                for piece in self.original(request):
                    with self._lock:
                        self.times.append(time.monotonic())
                    yield piece
                finished = True
            finally:
                with self._lock:
                    if finished:
                        self.exhausted += 1
                    else:
                        self.closed_early += 1

        self.backend.stream = stream  # instance attribute shadows the method
        return self

    def __exit__(self, *exc: object) -> None:
        del self.backend.stream

    def after(self, moment: float) -> int:
        """Pieces the model finished after ``moment``."""
        with self._lock:
            return sum(1 for t in self.times if t > moment)


class Timeline(BaseObserver):
    """Records when ``watch`` processed and pushed each frame (monotonic seconds)."""

    def __init__(self, watch: object) -> None:
        super().__init__()
        self.watch = watch
        self.processed: list[tuple[float, Frame]] = []
        self.pushed: list[tuple[float, Frame]] = []

    async def on_process_frame(self, data: FrameProcessed) -> None:
        if data.processor is self.watch:
            self.processed.append((time.monotonic(), data.frame))

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.source is self.watch:
            self.pushed.append((time.monotonic(), data.frame))

    def first_processed(self, kind: type) -> float:
        return next(t for t, f in self.processed if isinstance(f, kind))

    def last_processed(self, kind: type) -> float:
        return [t for t, f in self.processed if isinstance(f, kind)][-1]

    def first_pushed(self, kind: type) -> float:
        return next(t for t, f in self.pushed if isinstance(f, kind))


def audio_frames(frames: Sequence[Frame]) -> list[TTSAudioRawFrame]:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def audio_bytes_by_context(frames: Sequence[Frame]) -> dict[str, int]:
    """Total audio bytes per context ID, in order of first appearance."""
    totals: dict[str, int] = {}
    for f in audio_frames(frames):
        totals[f.context_id] = totals.get(f.context_id, 0) + len(f.audio)
    return totals


def shape(frames: Sequence[Frame]) -> list[str]:
    """Frame type names with metrics dropped and runs of audio frames collapsed to one."""
    names: list[str] = []
    for f in frames:
        if isinstance(f, MetricsFrame):
            continue
        name = type(f).__name__
        if name == "TTSAudioRawFrame" and names and names[-1] == name:
            continue
        names.append(name)
    return names


def audio_by_context(frames: Sequence[Frame]) -> dict[str, bytes]:
    """The audio of each context ID, joined, in order of first appearance."""
    parts: dict[str, list[bytes]] = {}
    for f in audio_frames(frames):
        parts.setdefault(f.context_id, []).append(f.audio)
    return {k: b"".join(v) for k, v in parts.items()}


class InterruptAfterAudio(BaseObserver):
    """Interrupts ``service`` once it has pushed ``frames`` audio frames of a turn.

    Tying the interruption to audio actually produced (instead of a fixed delay)
    guarantees it lands mid-generation however loaded the machine is.
    """

    def __init__(self, service: object, frames: int = 3) -> None:
        super().__init__()
        self.service = service
        self.frames = frames
        self.seen = 0
        self.sent_at: float | None = None
        self._tasks: set = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        import asyncio

        from pipecat.frames.frames import InterruptionFrame

        if data.source is not self.service or not isinstance(data.frame, TTSAudioRawFrame):
            return
        self.seen += 1
        if self.seen == self.frames and self.sent_at is None:
            self.sent_at = time.monotonic()
            # Queued from a task of its own: the push being observed runs on the very
            # task the interruption cancels.
            task = asyncio.create_task(self.service.queue_frame(InterruptionFrame()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
