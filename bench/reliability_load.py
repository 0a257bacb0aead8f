"""Load: N concurrent voice-bot sessions over ``WS /ws`` for a fixed time, each talking
and barging in. Prints sessions completed, audio underruns, errors and barge-in
latency under load (p50/p95).

One ``bot.py`` process (``bench/bot_harness.start_bot``: loopback port, bundled Piper
voice, offline responder). Every session is a :class:`VoiceClient` (16 kHz Piper speech
sent at real time in 20 ms frames; the bot's audio played at real time) running, until
the deadline, the loop of ``bench/bot_latency.py``: say a phrase, wait for the answer,
let the bot talk 0.6-1.4 s, talk over it with the next phrase.

* **barge-in** = last bot sound heard between the user's speech onset and the end of
  that utterance, minus the onset (0 if silent at once); trials where the bot was not
  audible just before the onset are skipped, as in ``bot_latency.py``.
* **underrun** = the client's player ran dry for at least ``--underrun-ms`` while the
  bot was speaking (between RTVI ``bot-started-speaking`` and ``bot-stopped-speaking``,
  not paused, not flushed): a gap a listener would hear in the middle of a reply.
* **errors** = session exceptions, ``error`` messages to a client, answers that did
  not come within 20 s, and sessions the server counted as failed.
* a session is **completed** when it ran to the deadline on one open connection, got
  at least one answer and raised nothing.

Bounded: ``--sessions`` ≤ 64, ``--duration`` ≤ 600 s, every wait has a timeout, and the
whole run is cancelled 90 s after the deadline. Loopback only. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bot_harness import PHRASES, machine, pct, start_bot, synthesize_phrases  # noqa: E402

from pipecat_vibevoice.clients.voice_client import PlaybackModel, VoiceClient  # noqa: E402

ANSWER_TIMEOUT_S = 20.0


class CountingPlayer(PlaybackModel):
    """The client's real-time player, counting dry gaps while the bot is speaking."""

    def __init__(self, *args: Any, underrun_s: float = 0.04, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.underrun_s = underrun_s
        self.speaking = False
        self.underruns = 0
        self.dry_s = 0.0
        self._last_end: float | None = None

    def feed(self, pcm: bytes, now: float) -> None:  # noqa: D102
        self._settle(now)
        if self.speaking and not self._paused and not self._scheduled and self._last_end:
            gap = now - self._last_end
            if gap >= self.underrun_s:
                self.underruns += 1
                self.dry_s += gap
        super().feed(pcm, now)
        if self._scheduled:
            self._last_end = self._scheduled[-1][1]

    def flush(self, now: float) -> None:  # noqa: D102
        super().flush(now)
        self._last_end = None

    def pause(self, now: float) -> None:  # noqa: D102
        super().pause(now)
        self._last_end = None

    def resume(self, now: float) -> None:  # noqa: D102
        super().resume(now)
        self._last_end = self._scheduled[-1][1] if self._scheduled else None


class LoadClient(VoiceClient):
    """:class:`VoiceClient` with the counting player and the bot's speaking state."""

    def __init__(self, url: str, underrun_s: float, custom_messages: bool = True) -> None:
        super().__init__(url, custom_messages=custom_messages)
        self.player = CountingPlayer(24000, underrun_s=underrun_s)

    def _on_message(self, msg: dict, now: float) -> None:
        kind = msg.get("type")
        if kind == "bot-started-speaking":
            self.player.speaking = True
        elif kind == "bot-stopped-speaking":
            self.player.speaking = False
            self.player._last_end = None
        super()._on_message(msg, now)


@dataclass
class SessionResult:
    """What one session did."""

    completed: bool = False
    refused: bool = False
    #: Connection attempt to the server's refusal (close or error), when refused.
    refused_after_s: float | None = None
    refusal: str = ""
    answers: int = 0
    v2v: list[float] = field(default_factory=list)
    no_answer: int = 0
    barge: list[float] = field(default_factory=list)
    skipped: int = 0
    underruns: int = 0
    dry_s: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    exception: str | None = None


def refusal_of(client: VoiceClient) -> str | None:
    """The server's reason when it refused the session (1013 busy, or an error first)."""
    if client.close_code == 1013 or (client.closed.is_set() and client.events.errors):
        errors = "; ".join(e for _, e in client.events.errors)
        return f"{client.close_code} {client.close_reason} {errors}".strip()
    return None


async def run_session(
    url: str,
    phrases: list[np.ndarray],
    deadline: float,
    seed: int,
    underrun_s: float,
    custom_messages: bool = True,
) -> SessionResult:
    """The talk / barge-in loop of one session until ``deadline``.

    A session the server refuses (closed with 1013, or an RTVI error then a close,
    before its first answer) is recorded as refused with the time it took to say so.
    """
    rng = random.Random(seed)
    result = SessionResult()
    client = LoadClient(url, underrun_s, custom_messages)
    attempted = time.monotonic()
    try:
        try:
            await client.connect()
        except Exception as exc:  # refused at the handshake (HTTP 403/503)
            result.refused, result.refusal = True, repr(exc)
            result.refused_after_s = time.monotonic() - attempted
            return result
        # Do not all speak at the same instant; a refusal arrives during this wait.
        try:
            await asyncio.wait_for(client.closed.wait(), rng.uniform(0.2, 1.5))
        except TimeoutError:
            pass
        if (reason := refusal_of(client)) is not None:
            result.refused, result.refusal = True, reason
            result.refused_after_s = time.monotonic() - attempted
            return result
        k = rng.randrange(len(phrases))
        utt = await client.say(phrases[k])
        while time.monotonic() < deadline:
            try:
                heard = await client.wait_bot_audio(utt.end, timeout=ANSWER_TIMEOUT_S)
            except TimeoutError:
                if client.closed.is_set():
                    raise ConnectionError("the server closed the connection") from None
                result.no_answer += 1
                k += 1
                utt = await client.say(phrases[k % len(phrases)])
                continue
            result.answers += 1
            result.v2v.append(heard - utt.end)
            await asyncio.sleep(max(0.0, heard + rng.uniform(0.6, 1.4) - time.monotonic()))
            if time.monotonic() >= deadline:
                break
            k += 1
            utt, done = client.say_nowait(phrases[k % len(phrases)])
            await asyncio.wait_for(done, 30)
            onset = utt.onset
            if onset is None or not client.player.last_audible_between(onset - 0.15, onset):
                result.skipped += 1
                continue
            last = client.player.last_audible_between(onset, utt.end)
            result.barge.append(0.0 if last is None else last - onset)
        result.completed = result.answers > 0 and not client.closed.is_set()
    except Exception as exc:  # counted, never fatal to the run
        result.exception = repr(exc)
    finally:
        result.underruns = client.player.underruns
        result.dry_s = round(client.player.dry_s, 3)
        result.error_messages = [e for _, e in client.events.errors]
        await client.close()
    return result


async def watch_loop_lag(samples: list[float], stop: asyncio.Event, every: float = 0.05) -> None:
    """How late this (client) process's event loop wakes up: a saturated client would
    delay what it hears and what it says, and the figures would blame the server."""
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(every)
        samples.append(time.monotonic() - t0 - every)


async def run_load(
    sessions: int, duration: float, seed: int, underrun_ms: float, extra: list[str]
) -> dict[str, Any]:
    """Start the bot, run the sessions, collect the figures."""
    phrases = await synthesize_phrases(PHRASES)
    bot = start_bot("vibevoice", *extra)
    proc = psutil.Process(bot.process.pid)
    try:
        rss_before = proc.memory_info().rss
        load_before = machine()
        me = psutil.Process()
        cpu_server0, cpu_client0 = proc.cpu_times(), me.cpu_times()
        lag: list[float] = []
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_loop_lag(lag, stop))
        started = time.monotonic()
        deadline = started + duration
        tasks = [
            run_session(bot.ws_url, phrases, deadline, seed + n, underrun_ms / 1000)
            for n in range(sessions)
        ]
        try:
            results: list[SessionResult] = await asyncio.wait_for(
                asyncio.gather(*tasks), duration + 90
            )
        finally:
            stop.set()
            await watcher
        elapsed = time.monotonic() - started
        cpu_server1, cpu_client1 = proc.cpu_times(), me.cpu_times()
        load_after = machine()
        await asyncio.sleep(2.0)  # the server notices the hang-ups
        health = await asyncio.to_thread(bot.health)
        rss_after = proc.memory_info().rss
    finally:
        bot.stop()
    barge = [b for r in results for b in r.barge]
    exceptions = [r.exception for r in results if r.exception]
    error_messages = [e for r in results for e in r.error_messages]
    no_answer = sum(r.no_answer for r in results)
    failed = health["sessions"]["failed"]
    return {
        "sessions": sessions,
        "duration_s": duration,
        "elapsed_s": round(elapsed, 1),
        "completed": sum(r.completed for r in results),
        "answers": sum(r.answers for r in results),
        "underruns": sum(r.underruns for r in results),
        "underrun_dry_s": round(sum(r.dry_s for r in results), 2),
        "underrun_threshold_ms": underrun_ms,
        "errors": len(exceptions) + len(error_messages) + no_answer + failed,
        "error_detail": {
            "exceptions": exceptions[:10],
            "error_messages": error_messages[:10],
            "no_answer_within_20s": no_answer,
            "server_failed_sessions": failed,
        },
        "barge_in_ms": {
            "p50": round(pct(barge, 50) * 1000, 1) if barge else None,
            "p95": round(pct(barge, 95) * 1000, 1) if barge else None,
            "max": round(max(barge) * 1000, 1) if barge else None,
            "n": len(barge),
            "skipped": sum(r.skipped for r in results),
        },
        "cpu_share": {  # cores kept busy, averaged over the run
            "server": round(
                (cpu_server1.user + cpu_server1.system - cpu_server0.user - cpu_server0.system)
                / elapsed,
                2,
            ),
            "clients": round(
                (cpu_client1.user + cpu_client1.system - cpu_client0.user - cpu_client0.system)
                / elapsed,
                2,
            ),
        },
        "client_loop_lag_ms": {
            "p95": round(pct(lag, 95) * 1000, 1) if lag else None,
            "max": round(max(lag) * 1000, 1) if lag else None,
        },
        "server_sessions_after": health["sessions"],
        "server_rss_mib": {
            "before": round(rss_before / 2**20, 1),
            "after": round(rss_after / 2**20, 1),
        },
        "machine_before": load_before,
        "machine_after": load_after,
    }


def print_report(r: dict[str, Any]) -> None:
    """Human-readable figures."""
    b = r["barge_in_ms"]
    print(f"load: {r['sessions']} sessions x {r['duration_s']:.0f} s over WS /ws")
    print(f"  machine: {r['machine_before']} (before), {r['machine_after']} (after)")
    print(f"  sessions completed  {r['completed']}/{r['sessions']}  ({r['answers']} answers)")
    print(f"  audio underruns     {r['underruns']} (gaps >= {r['underrun_threshold_ms']:.0f} ms "
          f"inside replies, {r['underrun_dry_s']} s silent in total)")  # fmt: skip
    print(f"  errors              {r['errors']}  {r['error_detail']}")
    print(f"  barge-in under load p50 {b['p50']} ms  p95 {b['p95']} ms  max {b['max']} ms  "
          f"(n={b['n']}, skipped {b['skipped']})")  # fmt: skip
    print(f"  server after        {r['server_sessions_after']}, RSS {r['server_rss_mib']} MiB")
    print(f"  CPU (cores busy)    server {r['cpu_share']['server']}, clients "
          f"{r['cpu_share']['clients']}; client loop lag p95 {r['client_loop_lag_ms']['p95']} ms, "
          f"max {r['client_loop_lag_ms']['max']} ms")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print (and save) the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=16, help="concurrent sessions (1..64)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (1..600)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--underrun-ms", type=float, default=40.0, help="dry gap that counts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "bot_args", nargs="*", help="extra bot.py flags after --, e.g. -- --vad-stop-secs 0.3"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.sessions <= 64 or not 1 <= args.duration <= 600:
        parser.error("--sessions must be 1..64 and --duration 1..600")
    result = asyncio.run(
        run_load(args.sessions, args.duration, args.seed, args.underrun_ms, args.bot_args)
    )
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
