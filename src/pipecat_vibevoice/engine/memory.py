"""Keeping a long-lived synthesis process at a flat memory footprint.

Measured on the bundled voice (``bench/reliability_soak.py``): with ONNX Runtime's
defaults a server's RSS grows in 30-40 MiB steps for hundreds of utterances. Two
mechanisms add up: ORT's CPU arena only ever grows (each new peak of concurrent
scratch memory extends it for good), and glibc's *dynamic* mmap threshold rises after
large buffers are freed, so later large buffers come from the heap, where freeing
them returns nothing to the OS. The cure used here:

* the backend asks ORT to shrink its arena at the end of each utterance (not after
  every run, which would page-fault the scratch memory back in for every window);
* :func:`pin_mmap_threshold` fixes glibc's threshold at 1 MiB, so the arena's regions
  and other large buffers are mapped on their own and go back to the OS when freed.

Together they halve the resident memory of the bundled voice and keep it flat, at no
measured cost in speed (see the README's reliability table).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading

from loguru import logger

#: Allocations of at least this size get their own mapping (glibc ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD_BYTES = 1 << 20
#: Free memory at the top of the heap beyond this is returned at once (``M_TRIM_THRESHOLD``).
TRIM_THRESHOLD_BYTES = 1 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_lock = threading.Lock()
_pinned: bool | None = None


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (idempotent).

    Returns whether the thresholds are pinned; ``False`` on a C library other than
    glibc (musl, macOS), where there is nothing to do.
    """
    global _pinned
    with _lock:
        if _pinned is not None:
            return _pinned
        _pinned = False
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
        except (OSError, AttributeError) as exc:
            logger.debug(f"could not tune glibc malloc: {exc}")
            return False
        _pinned = ok
        if ok:
            logger.debug(
                f"glibc malloc: buffers >= {MMAP_THRESHOLD_BYTES >> 20} MiB are mapped "
                "on their own (returned to the OS when freed)"
            )
        return ok
