"""Shared pieces of the server-level reliability tests.

* :class:`FaultyPiper` — the real Piper backend, wrapped to count every unit of model
  work the engine asks for (with its time) and to raise mid-stream on demand. This is
  fault injection into the real component, not a mock: the audio is Piper's.
* :class:`LoopServer` — the serving harness's :class:`ServerThread` (uvicorn on a free
  loopback port, in this process) that also keeps its event loop, so a test can count
  the server's ``asyncio`` tasks before and after a fault.
* :func:`captured_logs` — a loguru sink, to check that a failure is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from loguru import logger
from serving.tts_harness import ServerThread

from pipecat_vibevoice.engine import TTSConfig, TTSEngine
from pipecat_vibevoice.engine.backends.piper import PiperBackend

#: Long enough that a hang-up after the first chunk leaves most of the work undone.
LONG_TEXT = (
    "This sentence is long enough to keep the voice busy for a while. "
    "Then another sentence follows it, and a third one comes after that. "
    "A fourth sentence keeps going, because the listener is still there. "
    "The fifth sentence is where a careless server would still be talking. "
    "And a sixth one closes the paragraph, if anybody is left to hear it."
)


class InjectedFault(RuntimeError):
    """The error :class:`FaultyPiper` raises (e.g. a CUDA error in production)."""


class FaultyPiper(PiperBackend):
    """Real Piper; records each request for a piece of audio and can fail on demand.

    ``requests`` holds the monotonic time of every ``next()`` the engine made on a
    backend stream: one entry per unit of model work started. ``fail_after`` makes the
    next stream raise :class:`InjectedFault` after that many pieces (once).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[float] = []
        self.pieces = 0
        self.open_streams = 0
        self.fail_after: int | None = None
        self._lock = threading.Lock()

    def stream(self, request):  # noqa: D102 - see the class docstring
        inner = super().stream(request)
        with self._lock:
            self.open_streams += 1
        try:
            count = 0
            while True:
                with self._lock:
                    self.requests.append(time.monotonic())
                    fail = self.fail_after is not None and count >= self.fail_after
                    if fail:
                        self.fail_after = None
                if fail:
                    raise InjectedFault("injected inference failure mid-stream")
                try:
                    piece = next(inner)
                except StopIteration:
                    return
                count += 1
                with self._lock:
                    self.pieces += 1
                yield piece
        finally:
            inner.close()
            with self._lock:
                self.open_streams -= 1

    def requests_after(self, t0: float) -> int:
        """Units of work started after ``t0``."""
        with self._lock:
            return sum(1 for t in self.requests if t > t0)


def faulty_engine(**config: Any) -> tuple[TTSEngine, FaultyPiper]:
    """A (not yet initialised) engine over a :class:`FaultyPiper`."""
    backend = FaultyPiper()
    engine = TTSEngine(TTSConfig(engine="piper", **config), backend_factory=lambda _c: backend)
    return engine, backend


class LoopServer(ServerThread):
    """:class:`ServerThread` that remembers its loop; ``before_serve`` runs on it first."""

    def __init__(self, app: Any, before_serve: Any = None) -> None:
        super().__init__(app)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._before = before_serve
        self.thread = threading.Thread(target=self._run, daemon=True, name="loop-server")

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            if self._before is not None:
                await self._before(self)
            await self.server.serve(sockets=[self.sock])

        asyncio.run(serve())

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and return its result (blocking)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tasks(self) -> list[str]:
        """Names of the server loop's live tasks (this probe excluded)."""

        async def probe() -> list[str]:
            me = asyncio.current_task()
            return sorted(t.get_name() for t in asyncio.all_tasks() if t is not me)

        return self.call(probe(), 10.0)

    async def wait_tasks(self, at_most: int, timeout: float = 15.0) -> list[str]:
        """Poll until the server has at most ``at_most`` tasks; returns the last listing."""
        deadline = time.monotonic() + timeout
        while True:
            names = await asyncio.to_thread(self.tasks)
            if len(names) <= at_most or time.monotonic() > deadline:
                return names
            await asyncio.sleep(0.1)


async def wait_until(predicate: Any, timeout: float = 15.0, every: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value)
        await asyncio.sleep(every)


async def start_all_workers(engine: TTSEngine) -> None:
    """Make the engine's worker pool start every thread it may ever have.

    The pool is bounded (one worker per core, at most 4) but starts workers lazily, so
    a count taken after one warm stream can grow by a worker later without any leak.
    Blocking jobs on every worker at once leave it at its full, final size.
    """
    executor = engine.executor
    assert executor is not None, "initialise the engine first"
    loop = asyncio.get_running_loop()
    jobs = [loop.run_in_executor(executor, time.sleep, 0.1) for _ in range(executor._max_workers)]
    await asyncio.gather(*jobs)


def thread_names() -> list[str]:
    """Live threads of this process (for leak messages)."""
    return sorted(t.name for t in threading.enumerate())


def counted_threads() -> int:
    """Live threads, less the event loops' default-executor threads (``asyncio_N``).

    Those belong to bounded pools that keep idle workers by design, and the test's own
    ``asyncio.to_thread`` calls start them; every other thread (engine workers, store
    writer, transcriber, anything a session might leak) is counted.
    """
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


@contextlib.contextmanager
def captured_logs(level: str = "DEBUG") -> Iterator[list[dict[str, Any]]]:
    """Collect loguru records (level name and message) while the block runs."""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append({"level": record["level"].name, "message": record["message"]})

    handler = logger.add(sink, level=level, format="{message}")
    try:
        yield records
    finally:
        logger.remove(handler)
