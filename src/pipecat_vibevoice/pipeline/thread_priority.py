"""Running CPU-heavy work at a lower scheduling priority than the event loop.

On a small box the speech models share the cores with the event loop that moves
every conversation's audio; lowering the priority of the threads that only compute
keeps the audio on time. On Linux niceness is per thread and is inherited by the
threads a thread starts, so the priority is lowered in a thread of our own *before*
the library starts its compute threads there.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from loguru import logger


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice`` (Linux: niceness is per thread).

    Threads created afterwards by this thread inherit it — which is how CTranslate2's
    worker and OpenMP threads, started while the model loads, get it too. Returns
    whether the priority was lowered.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        return True
    except OSError as exc:
        logger.debug(f"could not lower thread priority: {exc}")
        return False


async def run_in_lowered_thread(nice: int, fn: Callable[[], Any], name: str) -> Any:
    """Run ``fn`` in a fresh thread whose priority is lowered by ``nice`` first.

    A fresh thread, not the event loop's pool: a pooled thread would keep the lower
    priority for whatever runs on it next.
    """
    future: Future = Future()

    def target() -> None:
        lower_thread_priority(nice)
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the awaiting coroutine
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wrap_future(future)
