"""The earliest-deadline-first engine pool."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from pipecat_vibevoice.engine.scheduling import (
    FIRST_CHUNK_SLACK_S,
    DeadlineExecutor,
    listener_deadline,
    set_pull_deadline,
)


def _submit(executor: DeadlineExecutor, deadline: float | None, fn, *args):
    ctx = contextvars.copy_context()
    ctx.run(set_pull_deadline, deadline)
    return ctx.run(executor.submit, fn, *args)


def test_most_urgent_call_runs_first() -> None:
    executor = DeadlineExecutor(1)
    release = threading.Event()
    blocker = executor.submit(release.wait)  # occupies the only worker
    order: list[str] = []
    futures = [
        _submit(executor, deadline, order.append, name)
        for name, deadline in [("late", 30.0), ("soon", 10.0), ("middle", 20.0)]
    ]
    release.set()
    for f in [blocker, *futures]:
        f.result(5)
    assert order == ["soon", "middle", "late"]
    executor.shutdown()


def test_errors_cancel_and_shutdown() -> None:
    executor = DeadlineExecutor(1)
    release = threading.Event()
    executor.submit(release.wait)
    cancelled = _submit(executor, 1.0, lambda: "never")
    assert cancelled.cancel()
    failing = executor.submit(lambda: 1 / 0)
    release.set()
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert cancelled.cancelled()
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(print)


async def test_run_in_executor_reads_the_task_deadline() -> None:
    executor = DeadlineExecutor(1)
    release = threading.Event()
    loop = asyncio.get_running_loop()
    blocker = loop.run_in_executor(executor, release.wait)
    order: list[int] = []

    async def pull(n: int, deadline: float) -> None:
        set_pull_deadline(deadline)  # what a serving stream does before pulling a chunk
        await loop.run_in_executor(executor, order.append, n)

    tasks = [asyncio.create_task(pull(n, d)) for n, d in [(1, 3.0), (2, 1.0), (3, 2.0)]]
    await asyncio.sleep(0.05)  # all three queued behind the blocker
    release.set()
    await asyncio.gather(blocker, *tasks)
    assert order == [2, 3, 1]
    executor.shutdown()


def _run_order(dry_guard_s: float, calls: list[tuple[str, float, bool]]) -> list[str]:
    """The order a one-worker pool runs ``(name, seconds from now, first chunk)`` calls in.

    All are queued behind a blocking call first, so the order is the pool's choice alone.
    """
    executor = DeadlineExecutor(1, dry_guard_s=dry_guard_s)
    release = threading.Event()
    blocker = executor.submit(release.wait)
    now = time.perf_counter()
    order: list[str] = []
    futures = []
    for name, offset, first in calls:
        ctx = contextvars.copy_context()
        ctx.run(set_pull_deadline, now + offset, first_chunk=first)
        futures.append(ctx.run(executor.submit, order.append, name))
    release.set()
    for f in [blocker, *futures]:
        f.result(5)
    executor.shutdown()
    return order


def test_first_chunks_yield_to_streams_about_to_run_dry() -> None:
    """A burst of first chunks (deadlines already past) must not starve playing streams.

    Plain EDF would run both first chunks first (their deadlines are the earliest); the
    playing stream within the guard of running dry goes ahead of them, the one with
    audio to spare after them.
    """
    calls = [
        ("new-a", -1.0, True),
        ("playing-later", 60.0, False),
        ("new-b", -0.5, True),
        ("playing-soon", 0.2, False),
    ]
    assert _run_order(0.5, calls) == ["playing-soon", "new-a", "new-b", "playing-later"]


def test_without_a_guard_the_pool_is_plain_edf() -> None:
    calls = [("playing", 30.0, False), ("new", -1.0, True), ("playing-dry", -2.0, False)]
    assert _run_order(0.0, calls) == ["playing-dry", "new", "playing"]


def test_a_listener_deadline_is_fixed_until_its_first_chunk_then_follows_its_audio() -> None:
    """Both deadline writers (the TTS server's streams, the bot's service) use this rule."""
    # Before the first chunk: the time the utterance opened plus the slack, whatever
    # the time of each pull (the server's start-up buffer pulls more than once).
    assert listener_deadline(10.0, None, 0.0) == (10.0 + FIRST_CHUNK_SLACK_S, True)
    # After: when the audio sent since the first chunk runs out; the opening no longer counts.
    assert listener_deadline(10.0, 10.3, 0.28) == (10.3 + 0.28, False)
    assert listener_deadline(0.0, 10.3, 1.5) == (10.3 + 1.5, False)
