"""Barge-in and voice-to-voice of a phone call through ``/telephony/twilio``, at the ear.

The caller is the loopback Twilio of the tests (``tests/bot/fake_twilio.py``): it opens
the media stream the way Twilio does (``connected``, ``start``), sends the caller's
speech — Piper speech synthesized by our engine, low-passed to 8 kHz and μ-law encoded —
as 20 ms ``media`` at real time, and plays the bot's ``media`` at real time as it
arrives, dropping its buffer on ``clear`` as Twilio does. The bot is ``bot.py`` in its
own process (``bench/bot_harness.py``). One call per configuration, a chain of turns:

1. the caller says a phrase;
2. voice-to-voice = first audible bot sound played by the line − the true end of the
   caller's speech (the end of the last audible 5 ms block sent, placed at its real-time
   position inside its 20 ms frame);
3. after the bot has talked for a random 0.6–1.4 s, the caller says the next phrase over
   it; barge-in = the last moment bot audio is heard on the line between the true speech
   onset (the first audible 5 ms block sent) and the end of that phrase, minus the
   onset — so audio that starts again while the caller speaks counts too;
4. that phrase is the next turn (back to 2).

A trial where the bot was not audible in the 150 ms before the onset (between two of its
sentences) is not counted for barge-in; the chain runs until ``--trials`` barge-ins were
counted. ``--resampler both`` (the default) measures the line's rate conversion of this
bot (``line``) and Pipecat's default stream resampler (``soxr``) in the same run.
Figures are printed with the run time and the machine's load; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import datetime
from pathlib import Path

from bot_harness import PHRASES, machine, pct, start_bot, summary, synthesize_phrases

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "bot"))
from fake_twilio import FakeTwilioCall  # noqa: E402  (the tests' carrier, not a package)

#: The goals this benchmark reports against.
GOAL_BARGE_P95_S = 0.200
GOAL_V2V_P50_S = 0.600


def _rel(times: list[float], onset: float, end: float) -> list[int]:
    """Event times in ms relative to the onset, for the verbose trial lines."""
    return [round((t - onset) * 1000) for t in times if onset - 1 < t < end]


async def run_call(url: str, phrases: list, trials: int, seed: int, verbose: bool) -> dict:
    """One call, a chain of turns (see the module docstring); the figures of each."""
    rng = random.Random(seed)
    v2v: list[float] = []
    barge: list[float] = []
    clears: list[float] = []
    skipped = 0
    async with FakeTwilioCall(url) as call:
        await asyncio.sleep(1.0)
        utt = await call.say(phrases[0])
        i = 0
        while len(barge) < trials and i < 2 * trials:
            i += 1
            try:
                heard = await call.wait_bot_audio(utt.end, timeout=20)
            except TimeoutError:
                print(f"  turn {i}: no answer within 20 s")
                break
            v2v.append(heard - utt.end)
            await asyncio.sleep(max(0.0, heard + rng.uniform(0.6, 1.4) - time.monotonic()))
            utt, done = call.say_nowait(phrases[i % len(phrases)])
            await done
            onset = utt.onset
            if onset is None or not call.player.last_audible_between(onset - 0.15, onset):
                skipped += 1
                continue
            last = call.player.last_audible_between(onset, utt.end)
            barge.append(0.0 if last is None else last - onset)
            clear = next((t for t in call.events.clears if t >= onset), None)
            if clear is not None:
                clears.append(clear - onset)
            if verbose:
                print(
                    f"  trial {len(barge):2d}: barge-in {barge[-1] * 1000:4.0f} ms; "
                    f"clears {_rel(call.events.clears, onset, utt.end)}"
                )
        try:
            heard = await call.wait_bot_audio(utt.end, timeout=20)
            v2v.append(heard - utt.end)
        except TimeoutError:
            pass
        await call.hang_up()
    return {"v2v": v2v, "barge": barge, "clears": clears, "skipped": skipped}


def _goal(value: float, goal: float) -> str:
    return f"{value * 1000:.0f} ms (goal <= {goal * 1000:.0f} ms: {'met' if value <= goal else 'MISSED'})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="barge-ins to count per call")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resampler", choices=("line", "soxr", "both"), default="both")
    parser.add_argument("--verbose", action="store_true", help="print every barge-in trial")
    args = parser.parse_args()

    started, clock = datetime.now(), time.monotonic()
    print(f"telephony latency benchmark, {started:%Y-%m-%d %H:%M:%S}; {machine()}")
    phrases = await synthesize_phrases(PHRASES)
    kinds = ("line", "soxr") if args.resampler == "both" else (args.resampler,)
    results = {}
    for kind in kinds:
        bot = start_bot("vibevoice", "--twilio-resampler", kind)
        try:
            url = f"ws://127.0.0.1:{bot.port}/telephony/twilio"
            print(f"[{kind}] {machine()} (before)")
            results[kind] = await run_call(url, phrases, args.trials, args.seed, args.verbose)
            print(f"[{kind}] {machine()} (after)")
        finally:
            bot.stop()

    print()
    print(
        f"telephony latency: {args.trials} barge-in trials per call, seed {args.seed}, "
        f"8 kHz μ-law through /telephony/twilio; ran {time.monotonic() - clock:.0f} s "
        f"from {started:%H:%M:%S}; {machine()}"
    )
    for kind, r in results.items():
        print(f"{kind:5s} voice-to-voice  {summary(r['v2v'])}")
        print(f"{kind:5s} barge-in        {summary(r['barge'])}  (skipped {r['skipped']})")
        print(f"{kind:5s} clear sent      {summary(r['clears'])}  (after the onset)")
    for kind, r in results.items():
        print(
            f"{kind:5s} goals: barge-in p95 {_goal(pct(r['barge'], 95), GOAL_BARGE_P95_S)}, "
            f"voice-to-voice p50 {_goal(pct(r['v2v'], 50), GOAL_V2V_P50_S)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
