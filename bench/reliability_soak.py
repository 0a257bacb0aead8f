"""Soak: N utterances through one long-lived TTS server; RSS growth, open file
descriptors, asyncio tasks and threads before and after (leaks show up here).

The server is the real serving app (``WS /v1/tts/stream``, bundled Piper voice, SQLite
store in a temporary directory) under uvicorn on a free loopback port, in this
process, so its event loop's tasks can be counted; the clients run in the same
process on their own loop (their memory is small and counted too). Every text is
unique, so every utterance is synthesised; the response cache is off by default
because filling its (bounded) memory would read as growth — ``--cache-mb`` turns it on.

Traffic mix over ``--connections`` concurrent clients (fixed by the seed): most
utterances are spoken and awaited to ``done``; some are streamed with ``append``; some
are cancelled mid-stream; some connections hang up mid-utterance. "Before" is taken
after ``--warmup`` utterances (pools started, allocator warm), "after" once the last
connection has closed and the server has settled (the RSS at process start is printed
too, so the warm-up's own growth is visible). Bounded by ``--utterances`` and
``--max-seconds``. Nothing is asserted; goals are printed next to the figures.

``--connections`` defaults to 2, the engine's worker width on the 2-core box: with more
streams than workers the server holds streams that are ahead back to real time
(``max_lead_s``), which only stretches the wall time of a leak hunt.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import uvicorn
from websockets.asyncio.client import connect

from pipecat_vibevoice.engine import TTSConfig
from pipecat_vibevoice.serving import ServingSettings
from pipecat_vibevoice.serving.app import create_app

RSS_GOAL_PCT = 5.0
WORDS = "quick brown fox jumps over the lazy dog while seven bright stars shine".split()


class Server:
    """The serving app on 127.0.0.1:<free port> in a thread; keeps its event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="soak-server")

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        asyncio.run(serve())

    def start(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("soak server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def tasks(self) -> int:
        """Live asyncio tasks on the server loop (the probe excluded)."""

        async def probe() -> int:
            return len(asyncio.all_tasks()) - 1

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(probe(), self.loop).result(10)


def snapshot(server: Server) -> dict[str, Any]:
    """RSS, fds, tasks and threads of this process, after a full collection."""
    gc.collect()
    proc = psutil.Process()
    return {
        "rss_mib": round(proc.memory_info().rss / 2**20, 2),
        "fds": proc.num_fds(),
        "server_tasks": server.tasks(),
        "threads": threading.active_count(),
    }


def text_for(n: int, rng: random.Random) -> str:
    """A unique sentence (the number makes it unique; the words vary its length)."""
    words = " ".join(rng.sample(WORDS, rng.randint(4, 10)))
    return f"Soak utterance number {n}: the {words}."


async def _until(ws: Any, rid: str, timeout: float = 60.0) -> str:
    """Read until ``done``/``error`` for ``rid`` (or ``cancelled`` naming it)."""
    end = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(ws.recv(), max(0.1, end - time.monotonic()))
        if isinstance(frame, bytes):
            continue
        event = json.loads(frame)
        if event["type"] in ("done", "error") and event.get("id") == rid:
            return event["type"] if event["type"] == "done" else f"error:{event['reason']}"
        if event["type"] == "cancelled" and rid in event["ids"]:
            return "cancelled"


async def _open(url: str) -> Any:
    ws = await connect(url, max_size=None, open_timeout=10)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ready["type"] == "ready", ready
    return ws


async def one(ws: Any, url: str, n: int, rng: random.Random) -> tuple[Any, str]:
    """One utterance of the mix; returns the (possibly new) connection and its outcome."""
    rid, text = f"u{n}", text_for(n, rng)
    roll = rng.random()
    if roll < 0.05:  # hang up mid-utterance, then reconnect
        await ws.send(json.dumps({"type": "speak", "id": rid, "text": text * 3}))
        while True:
            frame = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(frame, str) and json.loads(frame)["type"] == "chunk":
                break
        ws.transport.abort() if rng.random() < 0.5 else await ws.close()
        return await _open(url), "hung_up"
    if roll < 0.10:  # cancel mid-stream
        await ws.send(json.dumps({"type": "speak", "id": rid, "text": text * 3}))
        while True:
            frame = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(frame, str) and json.loads(frame)["type"] == "chunk":
                break
        await ws.send(json.dumps({"type": "cancel"}))
        return ws, await _until(ws, rid)
    if roll < 0.25:  # streamed text
        words = text.split(" ")
        await ws.send(json.dumps({"type": "speak", "id": rid, "text": words[0] + " ",
                                  "final": False}))  # fmt: skip
        for word in words[1:]:
            await ws.send(json.dumps({"type": "append", "text": word + " "}))
        await ws.send(json.dumps({"type": "flush"}))
        return ws, await _until(ws, rid)
    await ws.send(json.dumps({"type": "speak", "id": rid, "text": text}))
    return ws, await _until(ws, rid)


async def drive(
    url: str, start: int, count: int, connections: int, seed: int, stop_at: float
) -> dict[str, int]:
    """Run utterances ``start .. start+count`` over ``connections`` clients."""
    outcomes: dict[str, int] = {}
    next_n = start
    end = start + count

    async def worker(k: int) -> None:
        nonlocal next_n
        rng = random.Random(seed * 1000 + k + start)
        ws = await _open(url)
        try:
            while next_n < end and time.monotonic() < stop_at:
                n, next_n = next_n, next_n + 1
                try:
                    ws, outcome = await one(ws, url, n, rng)
                except Exception as exc:  # counted; a fresh connection carries on
                    outcome = f"exception:{type(exc).__name__}"
                    await ws.close()
                    ws = await _open(url)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        finally:
            await ws.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    return outcomes


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, snapshot, run the utterances, settle, snapshot."""
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    settings = ServingSettings(
        store_url=str(tmp / "tts.sqlite3"),
        cache_max_bytes=args.cache_mb * 2**20,
        rate_limit_per_s=0,
        max_connections=0,
    )
    server = Server(create_app(settings, TTSConfig(engine="piper"))).start()
    url = f"ws://127.0.0.1:{server.port}/v1/tts/stream"
    stop_at = time.monotonic() + args.max_seconds
    try:
        at_start = snapshot(server)
        await drive(url, 0, args.warmup, args.connections, args.seed, stop_at)
        await asyncio.sleep(1.0)
        before = snapshot(server)
        traced = None
        if args.tracemalloc:
            import tracemalloc

            tracemalloc.start(8)
            traced = tracemalloc.take_snapshot()
        started = time.monotonic()
        outcomes: dict[str, int] = {}
        trend: list[float] = [before["rss_mib"]]
        done = 0
        while done < args.utterances and time.monotonic() < stop_at:
            step = min(100, args.utterances - done)
            got = await drive(url, args.warmup + done, step, args.connections, args.seed,
                              stop_at)  # fmt: skip
            for key, value in got.items():
                outcomes[key] = outcomes.get(key, 0) + value
            done += sum(got.values())
            trend.append(round(psutil.Process().memory_info().rss / 2**20, 2))
            print(f"  {done} utterances, RSS {trend[-1]} MiB", flush=True)
        elapsed = time.monotonic() - started
        await asyncio.sleep(2.0)
        after = snapshot(server)
        grown: list[str] = []
        if traced is not None:
            import tracemalloc

            diff = tracemalloc.take_snapshot().compare_to(traced, "traceback")
            for stat in diff[:8]:
                grown.append(f"{stat.size_diff / 1024:+.0f} KiB {stat.traceback.format()[-2:]}")
            tracemalloc.stop()
        service = server.app.state.tts_service
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(service.store.flush(), server.loop)
        )
        store = service.store.health()
        engine_health = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(service._engine.health_check(), server.loop)
        )
    finally:
        server.stop()
    growth = (after["rss_mib"] - before["rss_mib"]) / before["rss_mib"] * 100
    return {
        "utterances": done,
        "requested": args.utterances,
        "connections": args.connections,
        "elapsed_s": round(elapsed, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "warmup": args.warmup,
        "at_start": at_start,
        "before": before,
        "after": after,
        "python_growth": grown,
        "rss_growth_pct": round(growth, 2),
        "rss_goal_pct": RSS_GOAL_PCT,
        "rss_trend_mib": trend,
        "store": {k: store[k] for k in ("status", "written", "dropped", "failed")},
        "engine": {k: engine_health.get(k) for k in ("status", "active_streams", "failures")},
        "cache_mb": args.cache_mb,
        "machine": f"{psutil.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.2f}" for x in psutil.getloadavg()),
    }


def print_report(r: dict[str, Any]) -> None:
    """Human-readable figures."""
    b, a = r["before"], r["after"]
    verdict = "ok" if r["rss_growth_pct"] < r["rss_goal_pct"] else "OVER GOAL"
    print(f"soak: {r['utterances']} utterances over {r['connections']} connections "
          f"in {r['elapsed_s']} s ({r['machine']})")  # fmt: skip
    print(f"  outcomes       {r['outcomes']}")
    print(f"  RSS            {b['rss_mib']} -> {a['rss_mib']} MiB ({r['rss_growth_pct']:+.2f}%, "
          f"goal < {r['rss_goal_pct']}%: {verdict}); trend {r['rss_trend_mib']}")  # fmt: skip
    print(f"  open fds       {b['fds']} -> {a['fds']}")
    print(f"  asyncio tasks  {b['server_tasks']} -> {a['server_tasks']} (server loop)")
    print(f"  threads        {b['threads']} -> {a['threads']}")
    print(f"  store          {r['store']}   engine {r['engine']}")
    print(f"  (process start {r['at_start']['rss_mib']} MiB; 'before' after {r['warmup']} warm-up"
          " utterances)")  # fmt: skip
    for line in r["python_growth"]:
        print(f"  python growth  {line}")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print (and save) the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--utterances", type=int, default=1000, help="measured utterances")
    parser.add_argument("--warmup", type=int, default=100, help="utterances before 'before'")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also list the Python allocations that grew"
    )
    parser.add_argument("--connections", type=int, default=2, help="concurrent clients (1..32)")
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop after this long")
    parser.add_argument("--cache-mb", type=int, default=0, help="response cache size (0 = off)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if not 1 <= args.utterances <= 100_000 or not 1 <= args.connections <= 32:
        parser.error("--utterances must be 1..100000 and --connections 1..32")
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = asyncio.run(soak(args))
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
