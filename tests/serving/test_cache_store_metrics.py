"""Response cache, synthesis store, metrics, health and the example client, end to end."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import urllib.request
import wave
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving.tts_harness import ServerThread, open_client

from pipecat_vibevoice.serving.store import COLUMNS, SQLiteStore, SynthesisRecord, open_store

PHRASE = "Thanks for calling, how can I help?"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _speak(srv: ServerThread, rid: str, text: str, **extra):
    client = await open_client(srv.url)
    await client.send(type="speak", id=rid, text=text, **extra)
    result = await client.collect([rid])
    started = next(e for e in result[rid].events if e["type"] == "started")
    await client.ws.close()
    return started, result[rid]


async def test_cache_hit_streams_identical_audio(make_server) -> None:
    srv = make_server()
    started, first = await _speak(srv, "h1", PHRASE)
    assert started["cached"] is False and first.final["cached"] is False
    started, second = await _speak(srv, "h2", PHRASE)
    assert started["cached"] is True and second.final["cached"] is True
    assert bytes(second.audio) == bytes(first.audio)
    assert second.chunks == first.chunks  # same chunk boundaries
    strip = ("id",)
    assert [
        {k: v for k, v in e.items() if k not in strip}
        for e in second.events
        if e["type"] == "chunk"
    ] == [
        {k: v for k, v in e.items() if k not in strip} for e in first.events if e["type"] == "chunk"
    ]
    # Settings are part of the key: another speed is a miss.
    started, _ = await _speak(srv, "h3", PHRASE, speed=1.2)
    assert started["cached"] is False
    stats = srv.serving_state.cache.stats()
    assert stats["hits"] == 1 and stats["misses"] == 2 and stats["entries"] == 2


async def test_cancelled_synthesis_leaves_no_cache_entry(make_server) -> None:
    srv = make_server()
    text = "A phrase that gets cancelled halfway. It has two sentences to be sure."
    client = await open_client(srv.url)
    await client.send(type="speak", id="x1", text=text)
    await client.next_event("chunk")
    await client.send(type="cancel")
    await client.next_event("cancelled")
    await client.ws.close()
    assert srv.serving_state.cache.stats()["entries"] == 0
    started, result = await _speak(srv, "x2", text)
    assert started["cached"] is False  # synthesised afresh, in full
    assert result.final["type"] == "done" and result.final["audio_s"] > 2.0
    started, again = await _speak(srv, "x3", text)
    assert started["cached"] is True and bytes(again.audio) == bytes(result.audio)
    assert await srv.serving_state.store.flush()
    with sqlite3.connect(srv.serving_state.settings.store_url) as db:
        outcomes = dict(db.execute("SELECT request_id, outcome FROM syntheses"))
    assert outcomes == {"x1": "cancelled", "x2": "ok", "x3": "ok"}


async def test_cache_is_bounded_and_persists_across_restarts(make_server, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    srv = make_server(cache_dir=str(cache_dir), cache_max_bytes=200_000)
    _, one = await _speak(srv, "p1", PHRASE)
    for n in range(4):  # ~1.5 s each at 48 kB/s: the memory bound evicts old entries
        await _speak(srv, f"f{n}", f"Filler phrase number {n} for the cache.")
    stats = srv.serving_state.cache.stats()
    assert stats["bytes"] <= 200_000 and stats["entries"] < 5
    for _ in range(100):  # files are written just after ``done``
        if len(list(cache_dir.glob("*.pvvc"))) == 5:
            break
        await asyncio.sleep(0.02)
    assert len(list(cache_dir.glob("*.pvvc"))) == 5
    srv.stop()
    again = make_server(cache_dir=str(cache_dir), cache_max_bytes=200_000)
    started, two = await _speak(again, "p2", PHRASE)
    assert started["cached"] is True
    assert bytes(two.audio) == bytes(one.audio)
    # The words and their times are kept on disk with the audio.
    words = [[c["words"] for c in u.events if c["type"] == "chunk"] for u in (one, two)]
    assert words[0] == words[1] and [w for ws in words[0] for w, _ in ws] == PHRASE.split()


async def test_store_rows_describe_each_synthesis(make_server, tmp_path: Path) -> None:
    srv = make_server()
    await _speak(srv, "r1", PHRASE)
    await _speak(srv, "r2", PHRASE)  # cache hit
    client = await open_client(srv.url)
    await client.send(type="speak", id="r3", text="Voice nobody.", voice="nobody")
    await client.collect(["r3"])
    await client.ws.close()
    assert await srv.serving_state.store.flush()
    with sqlite3.connect(tmp_path / "tts.sqlite3") as db:
        db.row_factory = sqlite3.Row
        rows = {r["request_id"]: dict(r) for r in db.execute("SELECT * FROM syntheses")}
    assert set(rows) == {"r1", "r2", "r3"}
    r1, r2, r3 = rows["r1"], rows["r2"], rows["r3"]
    assert r1["text_sha256"] == hashlib.sha256(PHRASE.encode()).hexdigest()
    assert r1["text_chars"] == len(PHRASE)
    assert r1["voice"] == "en_US-joe-medium" and r1["engine"] == "piper"
    assert r1["outcome"] == "ok" and r1["cache_hit"] == 0 and r2["cache_hit"] == 1
    assert r1["audio_s"] == pytest.approx(r2["audio_s"]) and r1["audio_s"] > 1.0
    assert 0 < r1["first_chunk_ms"] < r1["total_ms"]
    assert r1["chunks"] > 5 and r1["gap_max_ms"] >= r1["gap_mean_ms"] > 0
    assert json.loads(r1["settings"])["sample_rate"] == 24000
    assert r3["outcome"] == "error" and "nobody" in r3["error"] and r3["chunks"] == 0
    assert PHRASE not in json.dumps([r1, r2, r3])  # the text itself is never stored


async def test_failing_disk_is_logged_and_audio_still_flows(make_server, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store wants a directory")
    srv = make_server(store_url=str(blocker / "db.sqlite3"))
    for n in range(2):
        _, result = await _speak(srv, f"d{n}", f"The disk is broken, number {n}.")
        assert result.final["type"] == "done"
    await srv.serving_state.store.flush()
    health = srv.serving_state.health()["store"]
    assert health["status"] == "failing" and health["failed"] == 2 and health["written"] == 0
    status, body = _get(srv.http + "/health")
    assert status == 200 and json.loads(body)["status"] == "degraded"


async def test_store_never_blocks_and_drops_when_full(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3", max_queue=5)
    rec = SynthesisRecord("s", "r", "h", 1, "v", 1.0, 1.0, "piper", 0.1, 1.0, 1, "ok")
    for _ in range(500):  # far more than the queue holds; each call returns at once
        store.record(rec)
    assert await store.flush()
    await store.close()
    assert store.written + store.dropped == 500 and store.dropped > 0
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM syntheses").fetchone()[0] == store.written
        names = [r[1] for r in db.execute("PRAGMA table_info(syntheses)")]
    assert names[1:] == list(COLUMNS)


def test_open_store_urls(tmp_path: Path) -> None:
    assert open_store("none").health()["kind"] == "none"
    store = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(store, SQLiteStore) and str(store.path) == f"{tmp_path}/a.db"
    asyncio.run(store.close())
    with pytest.raises(ValueError, match="postgresql"):
        open_store("postgresql://db/tts")


async def test_metrics_parse_and_count(server: ServerThread) -> None:
    await _speak(server, "mm1", "Metrics, please.")
    await _speak(server, "mm2", "Metrics, please.")
    client = await open_client(server.url)
    await client.ws.send("{broken")
    await client.next_event("error")
    status, text = _get(server.http + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "tts_first_chunk_latency_seconds",
        "tts_chunk_gap_seconds",
        "tts_active_sessions",
        "tts_active_syntheses",
        "tts_cache_hit_ratio",
        "tts_errors",
        "tts_syntheses",
        "tts_underruns",
        "tts_engine_queued_calls",
    ):
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("tts_first_chunk_latency_seconds_count", (("cache", "miss"),))] >= 1
    assert samples[("tts_first_chunk_latency_seconds_count", (("cache", "hit"),))] >= 1
    assert samples[("tts_errors_total", (("reason", "invalid_json"),))] >= 1
    assert samples[("tts_active_sessions", ())] >= 1  # this client is still connected
    assert 0 < samples[("tts_cache_hit_ratio", ())] <= 1
    assert samples[("tts_syntheses_total", (("outcome", "ok"),))] >= 2
    await client.ws.close()


async def test_health_reports_engine_cache_and_store(server: ServerThread) -> None:
    status, body = _get(server.http + "/health")
    data = json.loads(body)
    assert status == 200 and data["status"] == "ok"
    assert data["engine"]["status"] in ("ok", "degraded") and data["engine"]["engine"] == "piper"
    assert data["serving"]["store"]["kind"] == "sqlite"
    assert {"entries", "hit_ratio", "bytes"} <= set(data["serving"]["cache"])


def test_client_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipecat_vibevoice.clients.tts_client", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "--url" in out.stdout and "--append" in out.stdout


async def test_client_saves_wav(server: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    for extra in ([], ["--append"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipecat_vibevoice.clients.tts_client", "Hello from the example client.",
            "--url", server.url, "-o", str(out), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        assert "s of audio at 24000 Hz" in stdout.decode()
        with wave.open(str(out)) as wav:
            assert wav.getframerate() == 24000 and wav.getnframes() > 24000
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipecat_vibevoice.clients.tts_client", "Hi.", "--url", server.url,
        "--voice", "nobody", "-o", str(tmp_path / "x.wav"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "unknown_voice" in stderr.decode()
