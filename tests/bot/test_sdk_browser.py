"""Headless Chromium runs the page built on Pipecat's official client SDK (``/sdk/``).

The page is ``@pipecat-ai/client-js`` over ``@pipecat-ai/websocket-transport`` with our
media manager and serializer (``web/sdk-client/``), against a real ``bot.py``. The
microphone is a WAV file whose first sample is already speech: the question, then —
while the bot answers — the user talks over it. The test reads ``window.sdkState``.

What it pins down:

* the SDK's handshake (``client-ready`` → ``bot-ready``), transcripts both ways and the
  bot's audio;
* barge-in: ``playback-pause`` silences the SDK page's player, and Pipecat 1.14's
  interruption frame (which the SDK alone cannot decode) reaches it;
* the first word of a turn that starts at the very first sample of the stream
  survives. With the SDK's stock recorder the stream starts at the first non-zero
  sample, and the bot heard "time as it in Paris" for "What time is it in Paris";
* nothing is fetched from anywhere but the bot.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipecat_vibevoice.bot.sdk_page import SDK_FILES, sdk_dir

from .conftest import silence
from .test_browser_e2e import CHROMEDRIVER, CHROMIUM, _brief, make_driver, write_wav
from .test_browser_e2e import wait_state as wait_page_state

AUDIBLE = 0.01  # same threshold as the page
LEAD_IN_MS = 500  # web/sdk-client/src/media.js

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)",
)


def wait_state(driver, predicate, timeout: float, what: str):
    return wait_page_state(driver, predicate, timeout, what, name="sdkState")


def _finals(state: dict, role: str) -> list[str]:
    return [t["text"] for t in state["transcript"] if t["role"] == role and t["final"]]


@pytest.mark.slow
@pytest.mark.timeout(120)
@needs_chromium
def test_sdk_page_talks_plays_stops_on_barge_in_and_keeps_the_first_word(
    bot_server, speech, tmp_path
):
    # No silence before the question: the turn starts at the microphone's first sample.
    wav = tmp_path / "mic.wav"
    write_wav(
        wav, np.concatenate([speech["question"], silence(2.8), speech["barge"], silence(6.0)])
    )
    driver = make_driver(wav, tmp_path / "profile")
    try:
        driver.get(bot_server.http + "/sdk/?autoconnect=1")
        state = wait_state(driver, lambda s: s["botReady"], 20, "bot-ready")
        assert state["media"] == "voicebot"

        # 1. The question is transcribed whole, first word included.
        state = wait_state(driver, lambda s: bool(_finals(s, "user")), 20, "the user's transcript")
        question = _finals(state, "user")[0].lower()
        assert "what time is it" in question, question
        # The stream began with the lead-in, and the voice came right after it: the
        # turn started at the very beginning of what the microphone delivered.
        assert state["leadInFrames"] * 20 >= LEAD_IN_MS
        assert state["firstVoiceFrame"] is not None
        assert 0 <= state["firstVoiceFrame"] - state["leadInFrames"] < 10, _brief(state)

        # 2. The bot's answer arrives as text and is played.
        state = wait_state(
            driver,
            lambda s: bool(_finals(s, "bot")) and s["playback"]["audibleMs"] >= 300,
            15,
            "the bot's answer playing",
        )
        assert state["audioChunksReceived"] > 0

        # 3. The user talks over the bot: the page pauses/flushes and goes silent.
        state = wait_state(
            driver,
            lambda s: any(
                "story" in t.lower() or "dog" in t.lower() for t in _finals(s, "user")[1:]
            ),
            30,
            "the barge-in transcript",
        )
        meter = state["meter"]
        first_audible = next(t for t, rms in meter if rms >= AUDIBLE)
        stops = sorted(
            t
            for t in state["pauses"] + state["flushes"] + state["interruptions"]
            if t > first_audible
        )
        assert stops, f"playback was never paused or flushed: {_brief(state)}"
        stop = stops[0]
        before = [rms for t, rms in meter if stop - 400 <= t < stop]
        after = [rms for t, rms in meter if stop + 30 <= t < stop + 400]
        assert max(before) >= AUDIBLE, "the bot was not audible before the barge-in"
        assert after and max(after) < AUDIBLE, f"bot still audible after the stop: {after}"
        # Pipecat's interruption frame reached the page (the SDK alone drops it).
        assert any(t > first_audible for t in state["interruptions"]), _brief(state)
        assert state["micVoiceFrames"] > 50, "the fake microphone delivered no speech"
        assert not state["errors"], state["errors"]

        # 4. Nothing came from anywhere but the bot, and the SDK logged no decode error.
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        foreign = [u for u in resources if not u.startswith((bot_server.http, "data:", "blob:"))]
        assert not foreign, foreign
        logs = [e["message"] for e in driver.get_log("browser")]
        assert not [m for m in logs if "Unknown frame kind" in m or "deserialize" in m], logs
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_sdk_page_files_are_served_with_their_types(bot_server):
    with urllib.request.urlopen(bot_server.http + "/sdk/", timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/html")
        page = resp.read().decode()
    assert 'src="/sdk/sdk-client.js"' in page
    with urllib.request.urlopen(bot_server.http + "/sdk/sdk-client.js", timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/javascript")
        assert len(resp.read()) > 10_000
    with urllib.request.urlopen(bot_server.http + "/sdk?autoconnect=1", timeout=5) as resp:
        assert resp.url.endswith("/sdk/?autoconnect=1")  # redirected, query kept
    for name in ("../routes.py", "main.js", "nope.js"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{bot_server.http}/sdk/{name}", timeout=5)
        assert err.value.code == 404


def test_built_sdk_page_is_packaged_and_offline():
    """The committed build is complete and has no way to reach Daily's CDN."""
    root = Path(str(sdk_dir()))
    assert sorted(p.name for p in root.iterdir()) == sorted(SDK_FILES)
    bundle = (root / "sdk-client.js").read_text()
    assert bundle.startswith("/* Built by web/sdk-client/build.mjs")
    for needle in ("daily.co", "call-machine-object-bundle", "cdn."):
        assert needle not in bundle, needle
    assert "/static/audio-worklets.js" in bundle  # the bot's own worklets, same origin
