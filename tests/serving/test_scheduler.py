"""The earliest-deadline-first engine pool."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from pipecat_vibevoice.serving.scheduler import DeadlineExecutor, set_pull_deadline


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
