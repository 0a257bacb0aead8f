"""Capacity curve: N conversations at once → underruns, barge-in, voice-to-voice, CPU,
for our bot and the stock Pipecat bot in the same run.

For each bot (``bot.py --pipeline vibevoice`` with its default admission, and
``--pipeline stock``; see ``bot_harness``) and each N in ``--sessions`` (default 1, 2,
4, 6, 8, 12, 16), N standard protobuf clients (:class:`VoiceClient` with
``custom_messages=False``: Pipecat's frames only, as Pipecat's own clients) connect at
once and run, for ``--duration`` seconds, the loop of ``bench/reliability_load.py``:
say a phrase (16 kHz speech at real time), hear the answer, talk over it 0.6-1.4 s in.

Per N it prints, over the admitted sessions:

* **underruns**: the client's real-time player ran dry ≥ 40 ms inside a reply;
* **barge-in p95**: last bot sound heard after the user's true speech onset, minus it;
* **voice-to-voice p95**: first bot sound played minus the end of the user's speech;
* **silent**: admitted sessions that got no answer within 20 s, or failed;
* **refused** and the slowest refusal (attempt → the server's 1013 / RTVI error);
* **CPU**: cores the bot process kept busy, averaged over the run;
* the bot's own load report (``/health`` ``load``) sampled every second, for the
  question which signal predicts underruns.

A run **meets the goals** when, among admitted sessions, there are 0 underruns,
barge-in p95 ≤ 300 ms, voice-to-voice p95 ≤ 1.5 s, none silent, and every refusal
came within 1 s. A bot's **capacity** is the most sessions it served at once in a
run that met the goals. Prints a table, writes ``--json`` and a plot (``--plot``).
Loopback only; the client runs on the same cores (its CPU is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bot_harness import PHRASES, machine, pct, start_bot, synthesize_phrases  # noqa: E402
from reliability_load import SessionResult, run_session  # noqa: E402

GOALS = {"barge_p95_s": 0.300, "v2v_p95_s": 1.5, "refuse_within_s": 1.0}
DEFAULT_SESSIONS = (1, 2, 4, 6, 8, 12, 16, 20)


def meets_goals(row: dict[str, Any], barge_in: bool = True) -> bool:
    """Whether one run met the issue's goals (see the module doc).

    ``barge_in=False`` leaves out the barge-in goal, which the stock bot misses even
    alone, so that the two bots' capacities can still be compared.
    """
    if row["admitted"] == 0:
        return False
    barge, v2v = row["barge_p95_ms"], row["v2v_p95_ms"]
    return (
        row["underruns"] == 0
        and row["silent"] == 0
        and (not barge_in or barge is None or barge <= GOALS["barge_p95_s"] * 1000)
        and v2v is not None
        and v2v <= GOALS["v2v_p95_s"] * 1000
        and (row["slowest_refusal_ms"] or 0) <= GOALS["refuse_within_s"] * 1000
    )


async def sample_load(port: int, samples: list[dict], stop: asyncio.Event) -> None:
    """The bot's ``/health`` ``load`` block once a second (absent on the stock bot)."""

    def fetch() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read()).get("load")
        except Exception:
            return None

    while not stop.is_set():
        load = await asyncio.to_thread(fetch)
        if load:
            samples.append(load)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


def loop_thread_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the bot's main thread, which runs the event loop of every session."""
    for thread in proc.threads():
        if thread.id == proc.pid:
            return thread.user_time + thread.system_time
    return 0.0


async def run_point(bot: Any, n: int, phrases: list, duration: float, seed: int) -> dict[str, Any]:
    """N sessions at once against a running bot for ``duration`` seconds."""
    proc = psutil.Process(bot.process.pid)
    me = psutil.Process()
    cpu0, mine0, loop0 = proc.cpu_times(), me.cpu_times(), loop_thread_cpu(proc)
    stop = asyncio.Event()
    load_samples: list[dict] = []
    sampler = asyncio.create_task(sample_load(bot.port, load_samples, stop))
    started = time.monotonic()
    deadline = started + duration
    try:
        results: list[SessionResult] = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_session(bot.ws_url, phrases, deadline, seed + i, 0.04, False)
                    for i in range(n)
                )
            ),
            duration + 90,
        )
    finally:
        stop.set()
        await sampler
    elapsed = time.monotonic() - started
    cpu1, mine1, loop1 = proc.cpu_times(), me.cpu_times(), loop_thread_cpu(proc)
    admitted = [r for r in results if not r.refused]
    refused = [r for r in results if r.refused]
    barge = [b for r in admitted for b in r.barge]
    v2v = [v for r in admitted for v in r.v2v]
    silent = sum(1 for r in admitted if r.answers == 0 or r.exception) + sum(
        r.no_answer for r in admitted
    )

    def busy(a: Any, b: Any) -> float:
        return round((b.user + b.system - a.user - a.system) / elapsed, 2)

    def ms(values: list[float], q: float) -> float | None:
        return round(pct(values, q) * 1000) if values else None

    lag = [s["loop_lag_ms"] for s in load_samples if s.get("loop_lag_ms") is not None]
    row = {
        "sessions": n,
        "admitted": len(admitted),
        "refused": len(refused),
        "slowest_refusal_ms": round(max(r.refused_after_s for r in refused) * 1000)
        if refused
        else None,
        "refusals": sorted({r.refusal for r in refused})[:3],
        "underruns": sum(r.underruns for r in admitted),
        "dry_s": round(sum(r.dry_s for r in admitted), 2),
        "silent": silent,
        "answers": sum(r.answers for r in admitted),
        "barge_p95_ms": ms(barge, 95),
        "barge_n": len(barge),
        "v2v_p50_ms": ms(v2v, 50),
        "v2v_p95_ms": ms(v2v, 95),
        "cpu_bot": busy(cpu0, cpu1),
        "cpu_clients": busy(mine0, mine1),
        "cpu_loop": round((loop1 - loop0) / elapsed, 2),
        "bot_loop_lag_p95_ms": round(pct(lag, 95), 1) if lag else None,
        "load_samples": load_samples,
        "exceptions": [r.exception for r in admitted if r.exception][:3],
    }
    row["meets_goals"] = meets_goals(row)
    row["meets_goals_but_barge_in"] = meets_goals(row, barge_in=False)
    return row


def print_table(name: str, rows: list[dict]) -> None:
    """One line per N."""
    print(f"\n{name}")
    print(
        "   N  admit refused(max ms)  underruns(dry s)  silent  barge p95  v2v p50/p95"
        "   CPU bot/clients/loop  loop lag p95  goals"
    )
    for r in rows:
        print(
            f"  {r['sessions']:2d}  {r['admitted']:5d}  {r['refused']:3d} "
            f"({r['slowest_refusal_ms'] or 0:5d})   {r['underruns']:5d} ({r['dry_s']:6.2f})"
            f"  {r['silent']:6d}  {r['barge_p95_ms'] or 0:6d} ms  "
            f"{r['v2v_p50_ms'] or 0:5d}/{r['v2v_p95_ms'] or 0:5d} ms  "
            f"{r['cpu_bot']:5.2f}/{r['cpu_clients']:4.2f}/{r.get('cpu_loop', 0):4.2f}  "
            f"{r['bot_loop_lag_p95_ms'] if r['bot_loop_lag_p95_ms'] is not None else '-':>6}"
            f"     {'met' if r['meets_goals'] else 'met but barge-in' if r['meets_goals_but_barge_in'] else 'missed'}"
        )


def markdown_table(results: dict[str, list[dict]]) -> str:
    """The curve as a Markdown table (for the README): one row per N, both bots."""
    names = list(results)
    head = "| N | " + " | ".join(
        f"{n}: admitted · underruns · barge-in p95 · v2v p95 · CPU" for n in names
    )
    lines = [head + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(results[names[0]]):
        cells = []
        for name in names:
            r = results[name][i]
            cells.append(
                f"{r['admitted']}/{r['sessions']} · {r['underruns']} · {r['barge_p95_ms']} ms"
                f" · {r['v2v_p95_ms']} ms · {r['cpu_bot']:.2f}"
                + (" ✅" if r["meets_goals"] else "")
            )
        lines.append(f"| {row['sessions']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def capacity(rows: list[dict], key: str = "meets_goals") -> int:
    """Most sessions served at once in a run that met the goals (``key``)."""
    return max((r["admitted"] for r in rows if r[key]), default=0)


def plot(results: dict[str, list[dict]], path: Path, stamp: str) -> None:
    """Underruns, barge-in p95 and voice-to-voice p95 against N, both bots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = (
        ("underruns", "underruns (≥ 40 ms gaps)", None),
        ("barge_p95_ms", "barge-in p95 (ms)", GOALS["barge_p95_s"] * 1000),
        ("v2v_p95_ms", "voice-to-voice p95 (ms)", GOALS["v2v_p95_s"] * 1000),
        ("admitted", "sessions admitted", None),
    )
    for ax, (key, label, goal) in zip(axes, panels, strict=True):
        for name, rows in results.items():
            xs = [r["sessions"] for r in rows]
            ys = [r[key] if r[key] is not None else float("nan") for r in rows]
            ax.plot(xs, ys, marker="o", label=name)
        if goal:
            ax.axhline(goal, color="grey", linestyle="--", linewidth=1, label="goal")
        ax.set_xlabel("conversations attempted at once")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"capacity on this box ({machine()}; {stamp})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    phrases = await synthesize_phrases(PHRASES)
    results: dict[str, list[dict]] = {}
    for pipeline in args.pipelines:
        # The stock peer is Pipecat's own pipeline as people run it: no admission of ours.
        extra = args.bot_args if pipeline == "vibevoice" else ["--admission", "off"]
        bot = start_bot(pipeline, *extra)
        rows = []
        try:
            for n in args.sessions:
                print(f"[{pipeline}] N={n}: {machine()}", flush=True)
                rows.append(await run_point(bot, n, phrases, args.duration, args.seed))
                await asyncio.sleep(3.0)  # the bot notices the hang-ups
        finally:
            bot.stop()
        results["ours" if pipeline == "vibevoice" else "stock"] = rows
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--sessions", type=int, nargs="+", default=list(DEFAULT_SESSIONS))
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per point")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument(
        "--pipelines", nargs="+", choices=("vibevoice", "stock"), default=["vibevoice", "stock"]
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--plot", type=Path, default=None, help="write the curve as a PNG")
    parser.add_argument("bot_args", nargs="*", help="extra flags for our bot after --")
    args = parser.parse_args(argv)
    if any(not 1 <= n <= 64 for n in args.sessions) or not 5 <= args.duration <= 600:
        parser.error("--sessions must be 1..64 and --duration 5..600")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = asyncio.run(main_async(args))
    print(f"\ncapacity curve, {args.duration:.0f} s per point, {stamp}, {machine()}")
    for name, rows in results.items():
        print_table(name, rows)
    for label, key in (
        ("the goals", "meets_goals"),
        ("the goals but barge-in", "meets_goals_but_barge_in"),
    ):
        caps = {name: capacity(rows, key) for name, rows in results.items()}
        ratio = (
            f", ratio ours / stock {caps.get('ours', 0) / caps['stock']:.2f}"
            if caps.get("stock")
            else ""
        )
        print(f"capacity at {label}: {caps}{ratio}")
    print()
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps({"stamp": stamp, "results": results}, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
