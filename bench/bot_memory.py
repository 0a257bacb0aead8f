"""Memory of our bot vs the stock Pipecat bot: peak RSS, per-session cost, leaks.

Each bot is ``bot.py`` in its own subprocess (see ``bot_harness``); RSS is read from
``/proc/<pid>`` (``VmRSS`` now, ``VmHWM`` = peak since start) with psutil. Measured in
the same run, one bot after the other:

* idle: RSS once ``/health`` is ok (ours has loaded every model; the stock bot loads
  per connection, so its idle is smaller);
* one session: peak RSS (``VmHWM``) after a first session (speak, get an answer,
  hang up);
* sequential: RSS after each of ``--sessions`` sessions one after another (each one
  spoken to and answered, then hung up), and the growth after the first;
* concurrent: RSS with 1..``--concurrent`` sessions connected at once, each answered:
  the marginal cost of one more live session.

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio

import psutil
from bot_harness import PHRASES, machine, start_bot, synthesize_phrases

from pipecat_vibevoice.clients.voice_client import VoiceClient

MIB = 1024 * 1024


def rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


def hwm(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def one_session(url: str, audio) -> None:
    async with VoiceClient(url) as client:
        await asyncio.sleep(0.3)
        utt = await client.say(audio)
        await client.wait_bot_audio(utt.end, timeout=30)
        await asyncio.sleep(0.5)  # hang up while the bot talks


async def wait_idle(bot, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if (await asyncio.to_thread(bot.health))["sessions"]["active"] == 0:
            return
        await asyncio.sleep(0.1)


async def measure(pipeline: str, phrases, sessions: int, concurrent: int) -> dict:
    bot = start_bot(pipeline)
    pid = bot.process.pid
    out: dict = {}
    try:
        await asyncio.sleep(1.0)
        out["idle"] = rss(pid)
        seq = []
        for i in range(sessions):
            await one_session(bot.ws_url, phrases[i % len(phrases)])
            await wait_idle(bot)
            await asyncio.sleep(0.3)
            seq.append(rss(pid))
            if i == 0:
                out["one_session_peak"] = hwm(pid)
        out["sequential"] = seq
        live: list[VoiceClient] = []
        conc = []
        try:
            for k in range(concurrent):
                client = VoiceClient(bot.ws_url)
                await client.connect()
                live.append(client)
                await asyncio.sleep(0.3)
                utt = await client.say(phrases[k % len(phrases)])
                await client.wait_bot_audio(utt.end, timeout=40)
                await asyncio.sleep(0.5)
                conc.append(rss(pid))
        finally:
            for client in live:
                await client.close()
        out["concurrent"] = conc
        out["peak"] = hwm(pid)
    finally:
        bot.stop()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--only", choices=("vibevoice", "stock"), default=None)
    args = parser.parse_args()
    phrases = await synthesize_phrases(PHRASES)
    results = {}
    for pipeline in ("vibevoice", "stock"):
        if args.only and pipeline != args.only:
            continue
        print(f"[{pipeline}] {machine()}")
        results[pipeline] = await measure(pipeline, phrases, args.sessions, args.concurrent)

    print()
    print(
        f"bot memory benchmark ({args.sessions} sequential sessions, up to "
        f"{args.concurrent} concurrent), MiB"
    )
    for name, r in results.items():
        seq = r["sequential"]
        conc = r["concurrent"]
        steps = [b - a for a, b in zip(conc, conc[1:], strict=False)]
        growth = (seq[-1] - seq[0]) / seq[0] * 100
        print(
            f"{name:9s} idle {r['idle']:6.0f}   one-session peak {r['one_session_peak']:6.0f}   "
            f"overall peak {r['peak']:6.0f}"
        )
        print(
            f"{name:9s} sequential: after #1 {seq[0]:6.0f}  after #{len(seq)} {seq[-1]:6.0f}  "
            f"growth {growth:+.1f}%   (all: {' '.join(f'{v:.0f}' for v in seq)})"
        )
        print(
            f"{name:9s} concurrent: {' '.join(f'{v:.0f}' for v in conc)}  "
            f"per extra live session {' '.join(f'{s:+.0f}' for s in steps)}"
        )
    if len(results) == 2:
        ours, peer = results["vibevoice"], results["stock"]
        print(
            f"ratio ours/stock one-session peak RSS: "
            f"{ours['one_session_peak'] / peer['one_session_peak']:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
