"""The TTS pool on Ray Serve, for real: a local Ray, Serve's proxy, 2 replicas, Piper.

The pool is deploy/ray/serve.yaml's application (conftest.py), reached through Serve's
HTTP proxy on loopback like a bot would: websockets, ``/health``, ``/metrics``. A
replica is killed with ``ray.kill`` while it speaks, as a crash or a lost node would.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.serve", reason="the ray extra is not installed")

import ray  # noqa: E402
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame  # noqa: E402
from pipecat.observers.base_observer import BaseObserver, FramePushed  # noqa: E402
from pipecat.tests.utils import run_test  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402
from serving.tts_harness import open_client  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from pipecat_vibevoice.services import RemoteTTSService  # noqa: E402

LONG = " ".join(
    [
        "The first lighthouse keeper wrote in his log every single evening.",
        "He noted the wind, the height of the waves and the ships that passed.",
        "Some nights the fog was so thick that the lamp could barely be seen.",
    ]
    * 6
)
SERVE_YAML = Path(__file__).resolve().parents[2] / "deploy" / "ray" / "serve.yaml"
#: The pool size the issue asks for (the YAML's minimum and initial count).
REPLICAS = 2
#: PCM16 mono at the pool's 24 kHz.
BYTES_PER_S = 2 * 24000


def get(pool: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(pool.http + path, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def rows(pool: Any, request_ids: set[str] | None = None) -> list[dict[str, Any]]:
    if not pool.store_path.exists():
        return []
    with sqlite3.connect(pool.store_path, timeout=10) as db:
        db.row_factory = sqlite3.Row
        found = [dict(r) for r in db.execute("SELECT * FROM syntheses ORDER BY id")]
    return [r for r in found if request_ids is None or r["request_id"] in request_ids]


def wait_rows(pool: Any, request_ids: set[str], timeout: float = 20.0) -> list[dict]:
    """The store rows of these items, once every one is written (replicas write in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(pool, request_ids)
        if {r["request_id"] for r in found} >= request_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


async def speak(url: str, item_id: str, text: str) -> tuple[dict, dict, bytes]:
    """One utterance on a fresh connection: (started, done/error, audio)."""
    client = await open_client(url)
    try:
        await client.send(type="speak", id=item_id, text=text)
        got = (await client.collect([item_id], timeout=90))[item_id]
    finally:
        await client.ws.close()
    started = next(e for e in got.events if e["type"] == "started")
    return started, got.final or {}, bytes(got.audio)


def test_serve_yaml_is_what_ray_accepts() -> None:
    """The shipped file passes Ray's own schema; num_replicas next to the autoscaler does not."""
    spec = yaml.safe_load(SERVE_YAML.read_text())
    parsed = ServeDeploySchema.model_validate(spec)
    assert parsed.http_options.port == 8000 and parsed.http_options.host == "127.0.0.1"
    deployment = parsed.applications[0].deployments[0]
    assert deployment.autoscaling_config["min_replicas"] == REPLICAS
    assert deployment.autoscaling_config["initial_replicas"] == REPLICAS
    assert deployment.ray_actor_options.num_cpus == 1
    # The comment's claim: Ray refuses the fixed count together with the autoscaler.
    spec["applications"][0]["deployments"][0]["num_replicas"] = REPLICAS
    with pytest.raises(ValueError, match="num_replicas"):
        ServeDeploySchema.model_validate(spec)


async def test_eight_concurrent_streams_are_served_by_both_replicas(pool: Any) -> None:
    ids = [f"eight-{i}" for i in range(8)]
    results = await asyncio.gather(
        *(
            speak(pool.url, i, f"Stream number {n} is spoken by the pool.")
            for n, i in enumerate(ids)
        )
    )
    replicas = set()
    by_id = {}
    for item_id, (started, final, audio) in zip(ids, results, strict=True):
        assert final.get("type") == "done", (item_id, final)
        assert started["replica"], started
        replicas.add(started["replica"])
        by_id[item_id] = started["replica"]
        # The audio that came is the audio the server says it sent (nothing lost in the proxy).
        assert len(audio) / BYTES_PER_S == pytest.approx(final["audio_s"], abs=1e-3)
        assert final["audio_s"] > 1.0
    assert len(replicas) == pool.replicas, f"served by {replicas}"

    # The store: one row per synthesis, written by the replica that spoke it.
    written = wait_rows(pool, set(ids))
    assert sorted(r["request_id"] for r in written) == sorted(ids)
    for row in written:
        assert row["outcome"] == "ok"
        assert json.loads(row["settings"])["replica"] == by_id[row["request_id"]]


async def test_health_aggregates_the_pool_and_metrics_name_their_replica(pool: Any) -> None:
    status, headers, body = await asyncio.to_thread(get, pool, "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok", health
    assert health["engine"]["status"] == "ok"
    assert health["serving"]["replica"] == headers["x-tts-replica"]
    assert health["pool"]["status"] == "ok"
    assert health["pool"]["running"] == pool.replicas
    assert health["pool"]["replicas"] == {"RUNNING": pool.replicas}
    assert health["pool"]["answered_by"] == headers["x-tts-replica"]

    status, headers, body = await asyncio.to_thread(get, pool, "/metrics")
    assert status == 200 and headers["x-tts-replica"]
    assert b"tts_first_chunk_latency_seconds" in body


async def test_a_replica_killed_mid_stream_is_a_close_without_done(pool: Any) -> None:
    """The raw socket: the cut utterance never ends in ``done``; the next one is spoken."""
    pool.wait_running()
    client = await open_client(pool.url)
    await client.send(type="speak", id="cut", text=LONG)
    started = await client.next_event("started", timeout=60)
    await client.next_event("chunk", timeout=60)
    victim = started["replica"]
    await asyncio.to_thread(ray.kill, pool.replica_actor(victim), no_restart=True)

    events: list[dict] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            item = await client.recv(timeout=30)
            if isinstance(item, dict):
                events.append(item)
    assert not [e for e in events if e["type"] == "done"], events
    assert closed.value.rcvd is None or closed.value.rcvd.code != 1000  # not a normal close

    started, final, audio = await speak(pool.url, "after-cut", "The pool speaks on.")
    assert final.get("type") == "done" and audio
    assert started["replica"] != victim
    # Serve replaces the dead replica.
    await asyncio.to_thread(pool.wait_replaced)


async def test_remote_service_errors_the_cut_utterance_then_speaks_on_a_live_replica(
    pool: Any,
) -> None:
    """RemoteTTSService through the proxy: an ErrorFrame for the cut utterance, never silence."""
    await asyncio.to_thread(pool.wait_running)
    before = {r["id"] for r in rows(pool)}
    tts = RemoteTTSService(pool.url, connect_rounds=6, backoff_base_s=0.2)
    killed: list[str] = []

    class KillTheSpeakingReplica(BaseObserver):
        async def on_push_frame(self, data: FramePushed) -> None:
            if isinstance(data.frame, TTSAudioRawFrame) and not killed and tts.replica:
                killed.append(tts.replica)
                await asyncio.to_thread(ray.kill, pool.replica_actor(tts.replica), no_restart=True)

    down, up = await run_test(
        tts,
        frames_to_send=[TTSSpeakFrame(LONG), TTSSpeakFrame("After the replica died.")],
        observers=[KillTheSpeakingReplica()],
        start_timeout=30,
    )
    assert killed, "no audio came before the kill"
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1, [e.error for e in errors]
    assert "cut off" in errors[0].error and killed[0] in errors[0].error
    assert not errors[0].fatal
    assert tts.replica and tts.replica != killed[0]

    contexts: dict[str, int] = {}
    for frame in down:
        if isinstance(frame, TTSAudioRawFrame):
            contexts[frame.context_id] = contexts.get(frame.context_id, 0) + len(frame.audio)
    assert len(contexts) == 2, contexts
    cut, after = contexts.values()
    assert after / BYTES_PER_S > 0.8  # "After the replica died." in full

    # Each synthesis once: the survivor's row for the second utterance, and no copy of
    # the cut one (the service did not send it again; its row died with its replica).
    deadline = time.monotonic() + 20
    new: list[dict] = []
    while time.monotonic() < deadline:
        new = [r for r in rows(pool) if r["id"] not in before]
        if new:
            break
        await asyncio.sleep(0.2)
    assert len(new) == 1, new
    assert new[0]["outcome"] == "ok"
    assert json.loads(new[0]["settings"])["replica"] == tts.replica
    await asyncio.to_thread(pool.wait_replaced)
