"""Headless Chromium runs the real browser client against ``bot.py``.

The microphone is a WAV file (``--use-file-for-fake-audio-capture``): a question,
then — while the bot answers — the user talks over it. The page must play the bot's
answer and silence it on barge-in; the test reads the page's ``window.vvState``.
"""

from __future__ import annotations

import shutil
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from .conftest import MIC_RATE, silence

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AUDIBLE = 0.01  # same threshold as client.js

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)",
    ),
]


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes(audio.astype("<i2").tobytes())


def make_driver(wav: Path, profile: Path, init_script: str | None = None):
    """Headless Chromium whose microphone is ``wav``; ``init_script`` runs in every page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    if init_script:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
    return driver


def wait_state(driver, predicate, timeout: float, what: str, name: str = "vvState"):
    """Poll the page's ``window.<name>`` until ``predicate`` holds (console shown on failure)."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = driver.execute_script(f"return window.{name}")
        if state and predicate(state):
            return state
        time.sleep(0.1)
    logs = driver.get_log("browser")
    raise AssertionError(f"timed out waiting for {what}; state={_brief(state)}; console={logs}")


def _brief(state):
    if not state:
        return state
    return {k: v for k, v in state.items() if k != "meter"}


def _user_finals(state: dict) -> list[dict]:
    return [t for t in state["transcript"] if t["role"] == "user" and t["final"]]


def test_browser_plays_the_answer_and_stops_it_on_barge_in(bot_server, speech, tmp_path):
    wav = tmp_path / "mic.wav"
    write_wav(
        wav,
        np.concatenate(
            [silence(1.5), speech["question"], silence(2.8), speech["barge"], silence(6.0)]
        ),
    )
    driver = make_driver(wav, tmp_path / "profile")
    try:
        driver.get(bot_server.http + "/?autoconnect=1")
        wait_state(driver, lambda s: s["connected"], 20, "the websocket")
        # 1. The question is transcribed and the answer is played.
        state = wait_state(
            driver,
            lambda s: bool(_user_finals(s)),
            20,
            "the user's transcript",
        )
        question = [t["text"] for t in _user_finals(state)]
        assert "time is it" in question[0].lower(), question
        state = wait_state(
            driver, lambda s: s["playback"]["audibleMs"] >= 300, 15, "bot audio playing"
        )
        # 2. The user talks over the bot: playback is paused/flushed and goes silent.
        # "Stop please." may be a turn of its own (a short command, then a pause), so
        # wait for the final that carries the rest of what the user said.
        state = wait_state(
            driver,
            lambda s: any(
                "story" in t["text"].lower() or "dog" in t["text"].lower()
                for t in _user_finals(s)[1:]
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
        assert state["turns"] and 0 < state["turns"][0]["latencyMs"] < 5000
        assert state["micVoiceFrames"] > 50, "the fake microphone delivered no speech"
        assert not [e for e in state["errors"] if "could not start" in e], state["errors"]
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
