"""The TTS pool on Ray Serve vs the plain TTS server, same clients (issue 11).

Both sides run at once on this machine and are measured in interleaved rounds:

* plain: ``python -m pipecat_vibevoice.serving`` in its own process (CPU voice, one
  ONNX thread per call, cache and store off);
* Serve: a local Ray instance with deploy/ray_serve.py's app, ``--replicas`` replicas
  with the same settings, reached through Serve's HTTP proxy. Each replica's engine
  pool gets cores / replicas workers, so both sides run as many model calls at once.

The clients are bench/serving_concurrency.py's: N sockets, each speaking 10 sentences
one after the other, the next when the previous has finished playing; first-chunk
latency (``speak`` -> first audio frame) and underruns are measured at the client.
Goal: 8 clients, Serve's first-chunk p50 overhead <= 20 ms, no underrun.

On a 2-core machine the replicas share the same cores, so Serve brings no throughput
here, only its hop; what it is for shows on a pool of GPU hosts. There, run this script
with ``--url`` against the running pool and ``--replicas`` set to its size: it steps the
clients up and reports the streams per replica whose first chunk stays <= 300 ms p95,
the figure a GPU pool is judged by.

Reported, never asserted::

    flock /tmp/bench.lock nice -n 0 .venv/bin/python bench/serve_vs_plain.py
    python bench/serve_vs_plain.py --url ws://pool:8000/v1/tts/stream --replicas 4 \\
        --clients 8 16 32 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime

from serving_concurrency import Stats, free_port, pct, run_level, start_server, wait_ready

#: What a GPU pool is judged by: a stream's first chunk within this, at p95.
FIRST_CHUNK_P95_GOAL_MS = 300.0


def start_serve(replicas: int, max_active: int, workers: int) -> str:
    """Ray + Serve + the pool on this machine; returns its websocket URL."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from pipecat_vibevoice.deploy.ray_serve import build_app

    cores = os.cpu_count() or 2
    port = free_port()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        {
            "tts": {"engine": "piper", "num_threads": 1},
            "serving": {
                "store_url": "none",
                "cache_max_bytes": 0,
                "max_active_syntheses": max_active,
                "rate_limit_per_s": 0,
                "engine_workers": workers or max(1, cores // replicas),
            },
        },
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cores / replicas},
    )
    serve.run(app, name="tts", route_prefix="/")
    return f"ws://127.0.0.1:{port}/v1/tts/stream"


def stop_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def row(name: str, stats: Stats) -> str:
    f = stats.first_chunk_ms
    return (
        f"{name:>8} {stats.utterances:>5} {pct(f, 50):>7.0f}ms {pct(f, 95):>7.0f}ms "
        f"{max(f) if f else float('nan'):>7.0f}ms {stats.underruns:>9} "
        f"{stats.underrun_utterances:>10} {stats.max_late_ms:>7.0f}ms {stats.busy:>5} "
        f"{stats.errors:>4}"
    )


HEADER = (
    f"{'server':>8} {'utts':>5} {'ttfc p50':>9} {'ttfc p95':>9} {'ttfc max':>9} "
    f"{'underruns':>9} {'utts w/ ur':>10} {'max late':>9} {'busy':>5} {'err':>4}"
)


def merged(runs: list[Stats]) -> Stats:
    total = Stats()
    for s in runs:
        total.first_chunk_ms += s.first_chunk_ms
        total.underruns += s.underruns
        total.underrun_utterances += s.underrun_utterances
        total.utterances += s.utterances
        total.busy += s.busy
        total.errors += s.errors
        total.max_late_ms = max(total.max_late_ms, s.max_late_ms)
    return total


async def compare(args: argparse.Namespace) -> None:
    port = free_port()
    plain_url = f"ws://127.0.0.1:{port}/v1/tts/stream"
    plain = start_server(port, args.max_active, 1)
    try:
        serve_url = await asyncio.to_thread(
            start_serve, args.replicas, args.max_active, args.engine_workers
        )
        await wait_ready(plain_url)
        await wait_ready(serve_url)
        for url, clients in ((plain_url, 1), (serve_url, args.replicas)):
            await run_level(url, clients, 2, False)  # warm-up (every replica)
        (clients,) = args.clients
        runs: dict[str, list[Stats]] = {"plain": [], "serve": []}
        print(
            f"serve vs plain, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.2f}; {clients} clients x {args.sentences} sentences "
            f"paced by playback, {args.rounds} interleaved rounds, Serve: {args.replicas} replicas"
            f" x {args.engine_workers or max(1, (os.cpu_count() or 2) // args.replicas)} workers"
        )
        print(HEADER)
        print("-" * len(HEADER))
        for r in range(args.rounds):
            order = [("plain", plain_url), ("serve", serve_url)]
            for name, url in order if r % 2 == 0 else order[::-1]:
                stats, _ = await run_level(url, clients, args.sentences, True)
                runs[name].append(stats)
                print(row(f"{name}#{r + 1}", stats), flush=True)
        print("-" * len(HEADER))
        total = {name: merged(stats) for name, stats in runs.items()}
        for name, stats in total.items():
            print(row(name, stats))
        a, b = total["serve"].first_chunk_ms, total["plain"].first_chunk_ms
        print(
            f"Serve overhead: first chunk p50 {pct(a, 50) - pct(b, 50):+.0f} ms, "
            f"p95 {pct(a, 95) - pct(b, 95):+.0f} ms (goal: p50 <= 20 ms, no underrun); "
            f"load after {os.getloadavg()[0]:.2f}"
        )
    finally:
        plain.terminate()
        plain.wait(10)
        await asyncio.to_thread(stop_serve)


async def pool_capacity(args: argparse.Namespace) -> None:
    """Step the clients up against a running pool: streams per replica at the goal."""
    await wait_ready(args.url)
    await run_level(args.url, args.replicas, 2, False)
    print(
        f"pool {args.url}, {args.replicas} replicas, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"clients paced by playback, {args.sentences} sentences each"
    )
    print(HEADER)
    print("-" * len(HEADER))
    within = 0
    for clients in args.clients:
        stats, _ = await run_level(args.url, clients, args.sentences, True)
        print(row(str(clients), stats), flush=True)
        if pct(stats.first_chunk_ms, 95) <= FIRST_CHUNK_P95_GOAL_MS and not stats.errors:
            within = clients
    print(
        f"streams per replica with first chunk <= {FIRST_CHUNK_P95_GOAL_MS:.0f} ms p95: "
        f"{within / args.replicas:.1f} ({within} clients over {args.replicas} replicas)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8])
    parser.add_argument("--sentences", type=int, default=10, help="sentences per client")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per side")
    parser.add_argument("--replicas", type=int, default=2, help="Serve replicas (or the pool's)")
    parser.add_argument("--max-active", type=int, default=16, help="synthesis slots per server")
    parser.add_argument(
        "--engine-workers",
        type=int,
        default=0,
        help="model calls at once per replica (0 = cores / replicas, as many as the plain server)",
    )
    parser.add_argument("--url", default=None, help="step up the clients on this running pool")
    args = parser.parse_args()
    if args.url is None and len(args.clients) != 1:
        parser.error("the comparison runs one client level; --url steps several")
    started = time.perf_counter()
    asyncio.run(pool_capacity(args) if args.url else compare(args))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
