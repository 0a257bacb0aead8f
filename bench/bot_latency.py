"""Voice-to-voice latency and barge-in of our bot vs the stock Pipecat bot.

Both bots run as ``bot.py`` subprocesses (see ``bot_harness``) and are measured in the
same run, one after the other, by the same client. One session per bot, a chain of
``--trials`` turns:

1. the user says a phrase (16 kHz Piper speech, sent at real time in 20 ms frames);
2. voice-to-voice = first audible bot sound *played* by the client's real-time player
   minus the end of the user's speech (the last audible 20 ms frame sent);
3. after the bot has talked for a random 0.6-1.4 s, the user says the next phrase over
   it; barge-in = the last moment bot audio is heard in the player between the user's
   speech onset (first audible frame sent) and the end of that utterance, minus the
   onset — so bot audio that starts again while the user still speaks counts too;
4. that phrase is the next turn (back to 2).

A trial where the bot was not audible in the 150 ms before the onset (a gap between
its sentences) is not counted for barge-in; the chain goes on until ``--trials``
barge-ins were counted. Figures are printed; nothing is
asserted. The machine's cores are shared: read the load average printed with them.

Two clients (``--clients``): ``ours`` obeys our ``playback-pause``/``-resume``/``-flush``
RTVI server-messages; ``plain`` knows only Pipecat's standard frames and flushes on
``interruption`` (as Pipecat's own client SDKs and most apps do). The stock bot sends no
messages of ours, so it is measured with ``plain`` only. The onset is the first audible
frame the client sends: its synthetic speech starts there, so this is the true onset.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from bot_harness import PHRASES, machine, pct, start_bot, summary, synthesize_phrases

from pipecat_vibevoice.clients.voice_client import VoiceClient


def _rel(times: list[float], onset: float, end: float) -> list[int]:
    """Event times in ms relative to the onset, for the verbose trial lines."""
    return [round((t - onset) * 1000) for t in times if onset - 1 < t < end]


async def run_chain(
    url: str, phrases: list, trials: int, seed: int, verbose: bool, custom_messages: bool = True
) -> dict:
    rng = random.Random(seed)
    v2v: list[float] = []
    barge: list[float] = []
    skipped = 0
    answers = 0
    async with VoiceClient(url, custom_messages=custom_messages) as client:
        await asyncio.sleep(1.0)
        utt = await client.say(phrases[0])
        i = 0
        while len(barge) < trials and i < 2 * trials:
            i += 1
            try:
                heard = await client.wait_bot_audio(utt.end, timeout=20)
            except TimeoutError:
                print(f"  turn {i}: no answer within 20 s")
                break
            answers += 1
            v2v.append(heard - utt.end)
            await asyncio.sleep(max(0.0, heard + rng.uniform(0.6, 1.4) - time.monotonic()))
            utt, done = client.say_nowait(phrases[i % len(phrases)])
            await done
            onset = utt.onset
            if onset is None or not client.player.last_audible_between(onset - 0.15, onset):
                skipped += 1
                continue
            last = client.player.last_audible_between(onset, utt.end)
            barge.append(0.0 if last is None else last - onset)
            if verbose:
                p = client.player
                print(
                    f"  trial {len(barge):2d}: barge-in {barge[-1] * 1000:4.0f} ms; pauses "
                    f"{_rel(p.pauses, onset, utt.end)} resumes {_rel(p.resumes, onset, utt.end)}"
                    f" flushes {_rel(p.flushes, onset, utt.end)}"
                )
        # The last utterance's answer.
        try:
            heard = await client.wait_bot_audio(utt.end, timeout=20)
            v2v.append(heard - utt.end)
        except TimeoutError:
            pass
        finals = client.final_transcripts()
    return {"v2v": v2v, "barge": barge, "skipped": skipped, "finals": finals}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=("vibevoice", "stock"), default=None)
    parser.add_argument("--verbose", action="store_true", help="print every barge-in trial")
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=("ours", "plain"),
        default=["ours", "plain"],
        help="clients to measure our bot with (the stock bot: plain only)",
    )
    args = parser.parse_args()

    phrases = await synthesize_phrases(PHRASES)
    results = {}
    for pipeline in ("vibevoice", "stock"):
        if args.only and pipeline != args.only:
            continue
        clients = args.clients if pipeline == "vibevoice" else ["plain"]
        bot = start_bot(pipeline)
        try:
            for client in clients:
                name = f"{pipeline}/{client}"
                print(f"[{name}] {machine()} (before)")
                results[name] = await run_chain(
                    bot.ws_url, phrases, args.trials, args.seed, args.verbose, client == "ours"
                )
                print(f"[{name}] {machine()} (after)")
        finally:
            bot.stop()

    print()
    print(f"bot latency benchmark: {args.trials} barge-in trials per bot, seed {args.seed}")
    for name, r in results.items():
        print(f"{name:16s} voice-to-voice  {summary(r['v2v'])}")
        print(f"{name:16s} barge-in        {summary(r['barge'])}  (skipped {r['skipped']})")
        print(f"{name:16s} transcripts     {len(r['finals'])} finals, e.g. {r['finals'][:2]}")
    peer = results.get("stock/plain")
    for name, ours in results.items():
        if peer is None or name.startswith("stock"):
            continue
        for key, label, q in (("v2v", "voice-to-voice p50", 50), ("barge", "barge-in p95", 95)):
            a, b = pct(ours[key], q), pct(peer[key], q)
            print(f"ratio {name} / stock {label}: {a / b:.2f} ({a * 1000:.0f} / {b * 1000:.0f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
