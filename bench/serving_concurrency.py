"""Many clients on one TTS server: first-chunk latency and underruns (issue 5).

Starts the real TTS server (``python -m pipecat_vibevoice.serving``, CPU voice,
response cache off so every sentence is synthesised, store off) in its own process
on a free loopback port, then for N concurrent clients (1, 4, 8, 16 by default) each
client opens ``WS /v1/tts/stream`` and speaks 10 different sentences one after the
other, like a bot answering turn by turn: the next ``speak`` goes out when the
previous sentence has finished playing (``--no-pace``: as soon as its ``done``
arrives, i.e. every client synthesises flat out). Clients run in this process on one event loop; they only
receive frames, which costs little next to synthesis.

Per utterance, measured at the client:

* first-chunk latency: ``speak`` sent -> first audio frame received;
* underruns: a real-time player (:class:`Player`) starts when the first frame arrives
  and plays without a pause while it has audio; each time it runs dry for
  ``--underrun-ms`` or more (default 0: any gap) before the next frame is one underrun,
  and playback resumes with that frame, as a real player's would. ``silence`` is the
  dry time summed, ``max dry`` the longest;
* late frames (the measure before the player model, kept for comparison with older
  figures): frames arriving after the audio received before them would have finished
  playing on the schedule of the first frame. One stall makes every frame of the burst
  that follows it late until the burst has caught up, so it counts a stall several times;
* busy: items the server refused with ``busy`` (its ``max_active_syntheses``).

Clients all start at the same instant, so their first sentences arrive together (a
burst no real traffic is likely to match); ``--stagger-s S`` spreads their joining
evenly over S seconds instead.

Per level, at the server: ``cpu/aud`` is the server's CPU seconds per second of audio
delivered (the cost, hardly disturbed by other load) and ``cpu/wall`` the cores it got
on average: on a shared machine, a ``cpu/wall`` well under the core count means other
processes took the rest, and latencies grow accordingly.

Goal (issue 5): 8 concurrent clients on 2 cores, no underrun, first chunk <= 300 ms
p95. Reported, never asserted. ``--url`` measures an already running server instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

SENTENCES = [
    "Thanks for calling, how can I help you today?",
    "Your order shipped this morning and should arrive on Thursday.",
    "I can move the appointment to three o'clock if that works for you.",
    "The weather tomorrow looks sunny with a light breeze from the west.",
    "Please hold on for a moment while I check that for you.",
    "Your balance is forty two dollars and seventeen cents.",
    "I have sent a confirmation email to the address on file.",
    "Is there anything else I can help you with this afternoon?",
    "The store opens at nine and closes at six on weekdays.",
    "Great, everything is set, have a wonderful day.",
]


@dataclass
class Stats:
    """Per-utterance numbers of one run."""

    first_chunk_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    underrun_utterances: int = 0
    silence_s: float = 0.0
    #: The longest time a player ran dry (ms). Named as before the player model, which
    #: bench/serve_vs_plain.py reads and aggregates.
    max_late_ms: float = 0.0
    late_frames: int = 0
    #: The same, for the first sentence of every client only: all clients send it at
    #: the same moment, a burst that the later, staggered sentences do not see.
    first_round_ms: list[float] = field(default_factory=list)
    first_round_underruns: int = 0
    utterances: int = 0
    busy: int = 0
    errors: int = 0
    audio_s: float = 0.0


class Player:
    """A client playing one utterance in real time, as a person would hear it.

    Playback starts at the first frame and goes on without a pause while audio is in
    hand. When a frame arrives after everything before it has played, the player was
    dry for that gap: an underrun when the gap is at least ``threshold_s``, and
    playback resumes with the new frame (the rest of the utterance plays that much
    later). ``late_frames`` keeps the older measure against the first frame's schedule.
    """

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.first: float | None = None
        self.ends = 0.0  # when the audio in hand finishes playing
        self.received_s = 0.0
        self.underruns = 0
        self.dry_s = 0.0
        self.max_dry_s = 0.0
        self.late_frames = 0

    def frame(self, now: float, duration_s: float) -> None:
        """A frame of ``duration_s`` seconds of audio arrived at ``now``."""
        if self.first is None:
            self.first, self.ends = now, now
        elif now - self.first > self.received_s:
            self.late_frames += 1
        gap = now - self.ends
        if gap > 0 and self.received_s > 0:
            self.max_dry_s = max(self.max_dry_s, gap)
            if gap >= self.threshold_s:
                self.underruns += 1
                self.dry_s += gap
        self.ends = max(self.ends, now) + duration_s
        self.received_s += duration_s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one_client(
    url: str,
    n: int,
    sentences: int,
    stats: Stats,
    rate_hint: int,
    pace: bool,
    threshold_s: float = 0.0,
    start_after_s: float = 0.0,
) -> None:
    from websockets.asyncio.client import connect

    await asyncio.sleep(start_after_s)
    async with connect(url, max_size=None) as ws:
        ready = json.loads(await ws.recv())
        rate = int(ready.get("sample_rate", rate_hint))
        for k in range(sentences):
            text = SENTENCES[(k + n) % len(SENTENCES)]
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "speak", "id": f"{n}-{k}", "text": text}))
            player = Player(threshold_s)
            while True:
                frame = await ws.recv()
                now = time.perf_counter()
                if isinstance(frame, bytes):
                    if player.first is None:
                        stats.first_chunk_ms.append((now - sent) * 1000)
                        if k == 0:
                            stats.first_round_ms.append((now - sent) * 1000)
                    player.frame(now, len(frame) / 2 / rate)
                    continue
                message = json.loads(frame)
                if message["type"] == "done":
                    break
                if message["type"] == "error":
                    if message.get("reason") == "busy":
                        stats.busy += 1
                    else:
                        stats.errors += 1
                    break
            if pace and player.first is not None:
                # A playing client asks for the next sentence when this one ends.
                await asyncio.sleep(max(0.0, player.ends - time.perf_counter()))
            if player.first is not None:
                stats.utterances += 1
                stats.audio_s += player.received_s
                stats.underruns += player.underruns
                if k == 0:
                    stats.first_round_underruns += player.underruns
                stats.underrun_utterances += player.underruns > 0
                stats.silence_s += player.dry_s
                stats.max_late_ms = max(stats.max_late_ms, player.max_dry_s * 1000)
                stats.late_frames += player.late_frames


async def run_level(
    url: str,
    clients: int,
    sentences: int,
    pace: bool,
    threshold_s: float = 0.0,
    stagger_s: float = 0.0,
) -> tuple[Stats, float]:
    """``clients`` at once; with ``stagger_s`` they join evenly spread over that time."""
    stats = Stats()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            one_client(url, n, sentences, stats, 24000, pace, threshold_s, n * stagger_s / clients)
            for n in range(clients)
        )
    )
    return stats, time.perf_counter() - started


def server_cpu(proc: subprocess.Popen | None) -> float:
    """CPU seconds (user + system) the server process has used so far (nan if remote)."""
    if proc is None:
        return float("nan")
    import psutil

    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_server(
    port: int, max_active: int, threads: int, extra: list[str] | None = None
) -> subprocess.Popen:
    env = dict(os.environ)
    cmd = [
        sys.executable, "-m", "pipecat_vibevoice.serving", "--port", str(port),
        "--engine", "piper", "--tts-cache-max-bytes", "0", "--tts-store-url", "none",
        "--tts-max-active-syntheses", str(max_active), "--tts-rate-limit-per-s", "0",
        "--num-threads", str(threads), "--log-level", "WARNING", *(extra or []),
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=env)


async def wait_ready(url: str, timeout: float = 120.0) -> None:
    from websockets.asyncio.client import connect

    deadline = time.monotonic() + timeout
    while True:
        try:
            async with connect(url) as ws:
                await ws.recv()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def main_async(args: argparse.Namespace) -> None:
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        extra = [] if args.prebuffer_ms is None else ["--tts-prebuffer-ms", str(args.prebuffer_ms)]
        extra += args.server_arg
        proc = start_server(port, args.max_active, args.num_threads, extra)
        url = f"ws://127.0.0.1:{port}/v1/tts/stream"
    try:
        await wait_ready(url)
        # Warm-up: one utterance so the first level does not pay for lazy work.
        await run_level(url, 1, 2, False)
        print(
            f"server: CPU voice (piper), cache off, max_active_syntheses={args.max_active}, "
            f"prebuffer_ms={'default' if args.prebuffer_ms is None else args.prebuffer_ms}, "
            f"cores={os.cpu_count()}, load avg before={os.getloadavg()[0]:.2f}, "
            f"server args={' '.join(args.server_arg) or 'none'}, "
            f"clients {'paced by playback' if args.pace else 'flat out (next speak on done)'}, "
            f"underrun = player dry >= {args.underrun_ms:g} ms"
        )
        header = (
            f"{'clients':>7} {'utts':>5} {'ttfc p50':>9} {'ttfc p95':>9} {'ttfc max':>9} "
            f"{'underruns':>9} {'utts w/ ur':>10} {'silence':>8} {'max dry':>8} "
            f"{'late frm':>8} {'busy':>5} {'err':>4} "
            f"{'audio/wall':>10} {'cpu/aud':>7} {'cpu/wall':>8}"
        )
        print(header)
        print("-" * len(header))
        for clients in args.clients:
            cpu0 = server_cpu(proc)
            stats, wall = await run_level(
                url, clients, args.sentences, args.pace, args.underrun_ms / 1000, args.stagger_s
            )
            cpu = server_cpu(proc) - cpu0
            f = stats.first_chunk_ms
            print(
                f"{clients:>7} {stats.utterances:>5} {pct(f, 50):>7.0f}ms {pct(f, 95):>7.0f}ms "
                f"{max(f) if f else float('nan'):>7.0f}ms {stats.underruns:>9} "
                f"{stats.underrun_utterances:>10} {stats.silence_s:>7.2f}s "
                f"{stats.max_late_ms:>6.0f}ms {stats.late_frames:>8} {stats.busy:>5} "
                f"{stats.errors:>4} {stats.audio_s / wall:>9.1f}x "
                f"{cpu / max(stats.audio_s, 1e-9):>7.3f} {cpu / wall:>8.2f}",
                flush=True,
            )
            r, rest = stats.first_round_ms, len(f) - len(stats.first_round_ms)
            later = sorted(f)  # p95 of the later sentences: all first-chunk times minus r's
            for value in r:
                later.remove(value)
            print(
                f"{'':>7} of which the first sentences ({len(r)}, "
                f"{'sent at once' if not args.stagger_s else f'over {args.stagger_s:g} s'}): ttfc p95 "
                f"{pct(r, 95):.0f} ms, {stats.first_round_underruns} underruns; the other "
                f"{rest}: ttfc p95 {pct(later, 95):.0f} ms, "
                f"{stats.underruns - stats.first_round_underruns} underruns",
                flush=True,
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--sentences", type=int, default=10, help="sentences per client")
    parser.add_argument("--max-active", type=int, default=16, help="server's synthesis slots")
    parser.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads per call")
    parser.add_argument(
        "--pace",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send the next sentence when the previous one has finished playing "
        "(--no-pace: as soon as 'done' arrives)",
    )
    parser.add_argument(
        "--prebuffer-ms",
        type=int,
        default=None,
        help="server's start-up buffer (default: the server's default)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="one more flag for the server it starts (repeat; e.g. --server-arg=--tts-max-lead-s=0)",
    )
    parser.add_argument(
        "--underrun-ms",
        type=float,
        default=0.0,
        help="shortest dry gap of the client's player counted as an underrun (0: any)",
    )
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=0.0,
        help="clients join evenly over this many seconds (0: all at the same instant)",
    )
    parser.add_argument("--url", default=None, help="measure this server instead of starting one")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
