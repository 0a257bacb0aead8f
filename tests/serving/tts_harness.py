"""Test harness: a real TTS server on a free loopback port and a small websocket client.

The server is uvicorn running :func:`pipecat_vibevoice.serving.app.create_app` in a
thread (its own event loop), with the real engine on the bundled Piper voice; the
client is the ``websockets`` library. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from pipecat_vibevoice.engine import TTSConfig
from pipecat_vibevoice.serving import ServingSettings

PIPER = TTSConfig(engine="piper")


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:<free port> until :meth:`stop`."""

    def __init__(self, app: Any, sndbuf: int | None = None) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sndbuf:  # accepted sockets inherit it: a small kernel buffer per client
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", ws_max_size=1 << 20, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/tts/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def serving_state(self) -> Any:
        """The app's :class:`~pipecat_vibevoice.serving.state.ServingState`."""
        return self.app.state.serving_state

def settings_for(tmp: Path, **overrides: Any) -> ServingSettings:
    """Test settings: store in ``tmp``, generous rate limit unless overridden."""
    values: dict[str, Any] = {
        "store_url": str(tmp / "tts.sqlite3"),
        "rate_limit_per_s": 1000.0,
        "rate_limit_burst": 1000,
    }
    values.update(overrides)
    return ServingSettings(**values)


@dataclass
class Utterance:
    """What a client received for one item id."""

    id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any] | None:
        for ev in reversed(self.events):
            if ev["type"] in ("done", "error"):
                return ev
        return None


class Client:
    """A test-side protocol client over one ``websockets`` connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.log: list[dict[str, Any] | bytes] = []
        self.chunk_id: str | None = None

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 20.0) -> dict[str, Any] | bytes:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        item: dict[str, Any] | bytes = json.loads(frame) if isinstance(frame, str) else frame
        self.log.append(item)
        if isinstance(item, dict) and item["type"] == "chunk":
            self.chunk_id = item["id"]  # the next binary frame belongs to this item
        return item

    async def next_event(self, kind: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        """The next JSON event (of ``kind``), skipping audio frames."""
        while True:
            item = await self.recv(timeout)
            if isinstance(item, dict) and (kind is None or item["type"] == kind):
                return item

    async def collect(self, ids: list[str], timeout: float = 30.0) -> dict[str, Utterance]:
        """Read until every id got ``done``/``error`` (or appears in ``cancelled``)."""
        result = {i: Utterance(i) for i in ids}
        pending = set(ids)
        while pending:
            item = await self.recv(timeout)
            if isinstance(item, bytes):
                assert self.chunk_id is not None, "audio frame without a chunk event"
                if self.chunk_id in result:
                    result[self.chunk_id].audio += item
                    result[self.chunk_id].chunks.append(item)
                continue
            if item["type"] == "cancelled":
                pending -= set(item["ids"])
                continue
            rid = item.get("id")
            if rid in result:
                result[rid].events.append(item)
                if item["type"] in ("done", "error"):
                    pending.discard(rid)
        return result


async def open_client(url: str, **kwargs: Any) -> Client:
    """Connect and consume the ``ready`` greeting."""
    ws = await connect(url, max_size=None, **kwargs)
    client = Client(ws)
    ready = await client.next_event()
    assert ready["type"] == "ready", ready
    return client
