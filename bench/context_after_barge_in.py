"""What the LLM remembers of an answer the user interrupted, against what the user heard.

``bot.py --llm-url`` talks to a loopback OpenAI-compatible stand-in that answers every
turn with the same story; a client asks a question, barges in at a random moment inside
the answer's first two sentences (while the bot is audible), and the stand-in records the
next request. Per trial:

* heard = the bot's words (RTVI ``bot-tts-text``, one per word as it plays) that arrived
  before the client's player fell silent;
* kept = the words of the interrupted answer in the next request's assistant message.

A trial passes when kept is a prefix of the answer and within one word of heard. The
stock Pipecat bot is the peer: Pipecat's Piper service has no word times (it keeps or
drops a sentence whole, and reports a sentence, not words, as it plays), so for it the
bench prints the seconds of its answer that were heard and what it kept.

    python bench/context_after_barge_in.py --trials 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from pathlib import Path

import uvicorn
from bot_harness import PHRASES, machine, start_bot, synthesize_phrases

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bot.conftest import free_port  # noqa: E402
from bot.test_llm_server import STORY, fake_openai_server, words_heard  # noqa: E402

from pipecat_vibevoice.clients.voice_client import VoiceClient  # noqa: E402


async def trial(url: str, phrases: list, requests: list, delay: float) -> dict:
    first = len(requests)
    async with VoiceClient(url) as client:
        await asyncio.sleep(0.5)
        asked = await client.say(phrases[0])
        heard = await client.wait_bot_audio(asked.end, timeout=20)
        await asyncio.sleep(max(0.0, heard + delay - time.monotonic()))
        await client.wait_for(lambda: client.player.is_audible(time.monotonic()), timeout=5)
        barge, done = client.say_nowait(phrases[1])
        await done
        quiet = client.player.last_audible_between(barge.onset - 0.1, barge.end) or barge.onset
        await client.wait_for(lambda: len(requests) >= first + 2, timeout=20)
    messages = requests[first + 1]["body"]["messages"]
    answered = [m["content"] for m in messages if m["role"] == "assistant"]
    kept = answered[-1].split() if answered else []
    full = "".join(STORY).split()
    played = words_heard(client, quiet)
    return {
        "delay": delay,
        "heard_s": quiet - heard,
        "heard": len(played),
        "kept": len(kept),
        "prefix": kept == full[: len(kept)],
        "ok": kept == full[: len(kept)] and abs(len(kept) - len(played)) <= 1,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--only", choices=("vibevoice", "stock"), default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    phrases = await synthesize_phrases([PHRASES[0], PHRASES[1]])
    requests: list[dict] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            fake_openai_server(requests, STORY), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    delays = [rng.uniform(0.5, 4.0) for _ in range(args.trials)]
    results = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for pipeline in ("vibevoice", "stock"):
        if args.only and pipeline != args.only:
            continue
        bot = start_bot(pipeline, "--llm-url", f"http://127.0.0.1:{port}/v1")
        try:
            print(f"[{pipeline}] {machine()} (before)")
            rows = []
            for delay in delays:
                try:
                    rows.append(await trial(bot.ws_url, phrases, requests, delay))
                except TimeoutError as exc:
                    print(f"  trial at {delay:.2f}s failed: {exc}")
                    rows.append({"delay": delay, "heard_s": 0, "heard": 0, "kept": 0, "ok": False})
            results[pipeline] = rows
            print(f"[{pipeline}] {machine()} (after)")
        finally:
            bot.stop()
    server.should_exit = True
    print(f"\ncontext after a barge-in ({started}; {args.trials} trials, seed {args.seed})")
    for pipeline, rows in results.items():
        for r in rows:
            heard = f"{r['heard_s']:.2f}s of the answer heard"
            if pipeline == "vibevoice":
                verdict = "ok" if r["ok"] else "MISS"
                heard += f" ({r['heard']:2d} words)"
            else:
                verdict = ""
            print(f"  {pipeline:9s} {heard}, kept {r['kept']:2d} words {verdict}")
        if pipeline == "vibevoice":
            ok = sum(r["ok"] for r in rows)
            print(f"{pipeline:9s} within one word of what was heard: {ok}/{len(rows)}")
        else:
            kept = [r["kept"] for r in rows]
            print(f"{pipeline:9s} kept nothing in {kept.count(0)}/{len(rows)} trials")


if __name__ == "__main__":
    asyncio.run(main())
