"""Everything one ``/v1/tts/stream`` connection sends goes through one :class:`ClientSender`.

Two writers share a socket: the receive loop answers with ``error`` and ``cancelled``
events while the player sends audio. A lock serialises them, and a ``chunk`` event and
its audio frame go out as one shielded pair, so a cancel never splits them and the
``cancelled`` event (which waits for the lock) always comes after the pair.

Every send is awaited with a limit. uvicorn's send waits while the socket's write
buffer is above its high-water mark; that wait is the flow control that makes a slow
client slow only its own synthesis (the player awaits each send before pulling the
next chunk). A client that blocks one send longer than ``send_timeout_s`` is dropped
(``slow_client``). Once the client is gone every send raises :class:`ClientGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket

from .metrics import ServingMetrics
from .protocol import event

if TYPE_CHECKING:
    from loguru import Logger


class ClientGone(Exception):
    """The client disconnected or stopped reading; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClientSender:
    """The one way out to a client: serialised, time-limited, aware that it may be gone."""

    def __init__(
        self, websocket: WebSocket, send_timeout_s: float, metrics: ServingMetrics, log: Logger
    ) -> None:
        self.ws = websocket
        self.send_timeout_s = send_timeout_s
        self.metrics = metrics
        self.log = log  # bound to the session id
        self.lock = asyncio.Lock()
        #: Why the client is gone (``disconnected``, ``slow_client``), None while it is there.
        self.gone: str | None = None

    def mark_gone(self, reason: str) -> None:
        """Note that the client left (the first reason wins)."""
        self.gone = self.gone or reason

    async def _send(self, text: str | None = None, data: bytes | None = None) -> None:
        if self.gone:
            raise ClientGone(self.gone)
        try:
            if data is not None:
                coro = self.ws.send_bytes(data)
            else:
                coro = self.ws.send_text(text or "")
            await asyncio.wait_for(coro, self.send_timeout_s)
        except TimeoutError:
            self.gone = "slow_client"
            self.metrics.errors.labels("slow_client").inc()
            self.log.warning(f"client blocked a send for {self.send_timeout_s}s: dropping")
            raise ClientGone("slow_client") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # WebSocketDisconnect, ClientDisconnected, RuntimeError
            self.mark_gone("disconnected")
            raise ClientGone("disconnected") from exc

    async def event(self, kind: str, **fields: Any) -> None:
        """One JSON event, serialised with the audio frames."""
        async with self.lock:
            await self._send(event(kind, **fields))

    async def error(self, reason: str, message: str, request_id: str | None = None) -> None:
        """An ``error`` event (counted by reason); a gone client is ignored."""
        self.metrics.errors.labels(reason).inc()
        with contextlib.suppress(ClientGone):
            await self.event("error", id=request_id, reason=reason, message=message)

    async def _pair(self, meta: str, pcm: bytes) -> None:
        async with self.lock:
            await self._send(meta)
            await self._send(data=pcm)

    async def chunk(self, meta: str, pcm: bytes) -> None:
        """A ``chunk`` event and its audio frame, never split by a cancel.

        The pair is shielded, so a cancelled utterance still completes the pair it
        started and the ``cancelled`` event always comes after it.
        """
        await asyncio.shield(self._pair(meta, pcm))

    async def close(self, code: int = 1000) -> None:
        """Close the socket, waiting no longer than a send may; errors are ignored."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code), self.send_timeout_s)
