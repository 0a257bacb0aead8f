"""A server named as a pool replica says so; an unnamed one stays exactly as before (no Ray)."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from serving.tts_harness import PIPER, ServerThread, open_client, settings_for

from pipecat_vibevoice.serving.app import create_app


@pytest.mark.parametrize("replica", ["", "pod-7"])
async def test_started_health_and_store_name_the_replica_only_when_set(
    tmp_path: Path, replica: str
) -> None:
    settings = settings_for(tmp_path, replica=replica)
    srv = ServerThread(create_app(settings, PIPER)).start()
    try:
        client = await open_client(srv.url)
        await client.send(type="speak", id="r1", text="Which replica is speaking?")
        got = (await client.collect(["r1"]))["r1"]
        await client.ws.close()
        with urllib.request.urlopen(srv.http + "/health", timeout=10) as response:
            health = json.loads(response.read())
        assert await srv.serving_state.store.flush()
    finally:
        srv.stop()
    started = next(e for e in got.events if e["type"] == "started")
    assert got.final and got.final["type"] == "done"
    with sqlite3.connect(settings.store_url) as db:
        (row_settings,) = db.execute("SELECT settings FROM syntheses").fetchone()
    if replica:
        assert started["replica"] == replica
        assert health["serving"]["replica"] == replica
        assert json.loads(row_settings)["replica"] == replica
    else:  # the plain server: no field anywhere, and no pool section
        assert "replica" not in started
        assert "replica" not in health["serving"] and "pool" not in health
        assert "replica" not in json.loads(row_settings)
