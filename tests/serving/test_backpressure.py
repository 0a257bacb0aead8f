"""A client that stops reading: the server stops synthesising for it, drops it, serves others."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3

from serving.tts_harness import open_client
from websockets.asyncio.client import connect

LONG = " ".join(
    f"Sentence number {n} keeps the voice talking for a good few seconds more." for n in range(12)
)


async def test_slow_client_is_dropped_without_unbounded_buffering(make_server) -> None:
    # Loopback TCP buffers autotune to megabytes, which would hide the stall within
    # this short test; a small server send buffer makes it show after ~2 s of audio.
    srv = make_server(sndbuf=8192, send_timeout_s=1.0, cache_max_bytes=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window
    sock.connect(("127.0.0.1", srv.port))
    # max_queue=1: the client library stops reading the socket once one frame waits.
    stalled = await connect(srv.url, sock=sock, max_size=None, max_queue=1, close_timeout=0.2)
    await stalled.send(json.dumps({"type": "speak", "id": "slow", "text": LONG}))
    # Meanwhile another client is served normally.
    other = await open_client(srv.url)
    await other.send(type="speak", id="o1", text="I am still being served.")
    result = await other.collect(["o1"])
    assert result["o1"].final["type"] == "done"
    await other.ws.close()
    store = srv.serving_state.store
    for _ in range(200):  # the stalled item ends within send_timeout_s of the stall
        await store.flush()
        if store.health()["written"] >= 2:
            break
        await asyncio.sleep(0.05)
    with sqlite3.connect(srv.serving_state.settings.store_url) as db:
        row = db.execute(
            "SELECT outcome, error, audio_s FROM syntheses WHERE request_id='slow'"
        ).fetchone()
    assert row is not None, "the stalled synthesis was never closed"
    outcome, error, audio_s = row
    assert outcome == "disconnected" and error == "slow_client"
    # The whole text is ~40 s of speech; the server stopped after a bounded amount
    # (what the socket buffers took) instead of synthesising and queueing all of it.
    assert audio_s < 20.0, audio_s
    metrics = srv.serving_state.metrics.render().decode()
    assert 'tts_errors_total{reason="slow_client"} 1.0' in metrics
    await stalled.close()
