"""Barge-in as heard in the browser: the Pipecat SDK page (``/sdk/``) and our page (``/``).

One ``bot.py`` (``bot_harness``), then for each page a fresh headless Chromium whose
microphone is the same WAV file: a chain of phrases (``bot_harness.PHRASES``), each
spoken a random 1.6-2.6 s after the previous one ended, so it lands on the bot's
"I heard you say ..." answer to it. Nothing in the pages is changed for the
measurement: an init script wraps ``AudioContext`` so every node connected to a
destination also feeds an ``AnalyserNode`` (~10.7 ms window), and taps the
``getUserMedia`` stream the same way; both are polled every 5 ms on the page clock.

* The microphone's timeline is cross-correlated with the WAV's envelope (1 ms grid),
  which places the WAV on the page clock; a phrase's **true onset** is its first 5 ms
  with RMS over 100 (int16, about -50 dBFS) in the WAV.
* **barge-in** = the last moment the page's output is audible (RMS >= 0.01, the tests'
  threshold) between that onset and the end of the phrase, minus the onset — bot audio
  that starts again while the user still speaks counts, as in ``bot_latency.py``. It
  includes up to one analyser window (~11 ms).
* A phrase the bot was not audible for in the 150 ms before its onset (a gap between
  its sentences) is skipped; the WAV has enough phrases for ``--trials`` barge-ins in
  most runs.

Goals reported against, not asserted: SDK page p95 <= 200 ms, our page p95 <= 120 ms.
Figures are printed with the run time and the load average (the cores are shared).
``--pages`` may add ``sdk-wav``: the SDK page on the SDK's stock WavMediaManager (no
pause, no flush: it goes quiet only when the server stops sending).

    .venv/bin/python bench/sdk_barge_in.py --trials 10 [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bot_harness import MIC_RATE, PHRASES, machine, pct, start_bot, summary, synthesize_phrases

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# The browser set-up of the browser tests: Chromium with a WAV as its microphone.
from bot.test_browser_e2e import CHROMEDRIVER, CHROMIUM, make_driver, write_wav  # noqa: E402

AUDIBLE = 0.01
ONSET_RMS = 100.0  # int16 RMS over 5 ms: the phrase's true onset
LEAD_S = 1.0
GAP_S = (1.6, 2.6)
TAIL_S = 4.0
GOALS_MS = {"sdk": 200, "ours": 120}
PAGES = {
    "sdk": ("SDK page", "/sdk/?autoconnect=1"),
    "ours": ("our page", "/?autoconnect=1"),
    "sdk-wav": ("SDK stock media", "/sdk/?autoconnect=1&media=wav"),
}

#: Meters every node connected to a destination, and the microphone stream.
INIT_SCRIPT = r"""
(() => {
  const Orig = window.AudioContext;
  const connect = AudioNode.prototype.connect;
  const disconnect = AudioNode.prototype.disconnect;
  const taps = [];
  const out = [], mic = [];
  window.__meter = { out, mic };
  const windowFor = (rate) => 2 ** Math.round(Math.log2(rate * 0.01));
  function tapOf(ctx) {
    if (!ctx.__tap) {
      ctx.__tap = new AnalyserNode(ctx, { fftSize: windowFor(ctx.sampleRate) });
      taps.push({ node: ctx.__tap, buf: new Float32Array(ctx.__tap.fftSize) });
    }
    return ctx.__tap;
  }
  AudioNode.prototype.connect = function (dest, output, input) {
    const result = connect.apply(this, arguments);
    if (dest instanceof AudioDestinationNode && !this.context.__unmetered) {
      connect.call(this, tapOf(this.context), output || 0);
    }
    return result;
  };
  AudioNode.prototype.disconnect = function (dest) {
    const result = disconnect.apply(this, arguments);
    if (dest instanceof AudioDestinationNode && this.context.__tap) {
      try { disconnect.call(this, this.context.__tap); } catch (e) { /* not connected */ }
    }
    return result;
  };
  let micTap = null;
  const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await gum(constraints);
    if (!micTap) {
      const ctx = new Orig();
      ctx.__unmetered = true;
      const node = new AnalyserNode(ctx, { fftSize: windowFor(ctx.sampleRate) });
      connect.call(ctx.createMediaStreamSource(stream), node);
      micTap = { node, buf: new Float32Array(node.fftSize) };
      window.__meter.micWindow = node.fftSize / ctx.sampleRate;
    }
    return stream;
  };
  const rms = (tap) => {
    tap.node.getFloatTimeDomainData(tap.buf);
    let sq = 0;
    for (let i = 0; i < tap.buf.length; i++) sq += tap.buf[i] * tap.buf[i];
    return Math.sqrt(sq / tap.buf.length);
  };
  setInterval(() => {
    const t = performance.now();
    if (taps.length) out.push([t, Math.max(...taps.map(rms))]);
    if (micTap) mic.push([t, rms(micTap)]);
  }, 5);
})();
"""


def build_chain(phrases: list[np.ndarray], count: int, seed: int):
    """The microphone WAV and each phrase's (onset, end) in seconds of the WAV."""
    rng = random.Random(seed)
    parts = [np.zeros(int(LEAD_S * MIC_RATE), np.int16)]
    spans = []
    at = len(parts[0])
    for i in range(count):
        if i:
            gap = np.zeros(int(rng.uniform(*GAP_S) * MIC_RATE), np.int16)
            parts.append(gap)
            at += len(gap)
        audio = phrases[i % len(phrases)].astype(np.int16)
        loud = np.flatnonzero(_rms(audio, 0.005) >= ONSET_RMS)
        spans.append(((at + loud[0]) / MIC_RATE, (at + loud[-1] + 1) / MIC_RATE))
        parts.append(audio)
        at += len(audio)
    parts.append(np.zeros(int(TAIL_S * MIC_RATE), np.int16))
    return np.concatenate(parts), spans


def _rms(audio: np.ndarray, window_s: float) -> np.ndarray:
    """RMS over the ``window_s`` ending at each sample (16 kHz)."""
    n = max(1, int(window_s * MIC_RATE))
    sq = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    idx = np.arange(1, len(audio) + 1)
    lo = np.maximum(idx - n, 0)
    return np.sqrt((sq[idx] - sq[lo]) / (idx - lo))


def place_wav(mic: np.ndarray, audio: np.ndarray, window_s: float) -> tuple[float, float]:
    """Page time (ms) of the WAV's first sample, and the correlation of the envelopes.

    ``mic`` is ``[[t_ms, rms], ...]`` from the page's microphone tap.
    """
    t0, t1 = mic[0, 0], mic[-1, 0]
    grid = np.arange(math.floor(t0), math.ceil(t1))
    mic_env = np.interp(grid, mic[:, 0], mic[:, 1])
    wav_env = _rms(audio, window_s)[:: MIC_RATE // 1000] / 32768.0  # 1 ms steps
    a = mic_env - mic_env.mean()
    b = wav_env - wav_env.mean()
    n = 1 << (len(a) + len(b)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    # corr[k] pairs mic[k + j] with wav[j]: the WAV starts k ms after the grid's start.
    lags = np.arange(-2000, 2000)  # the device opens the file around the first poll
    best = int(lags[np.argmax(corr[lags % n])])
    start = grid[0] + best
    # Pearson r over the overlap, as a check of the fit.
    j = np.arange(len(b))
    k = j + best
    ok = (k >= 0) & (k < len(a))
    r = float(np.corrcoef(mic_env[k[ok]], wav_env[j[ok]])[0, 1])
    return float(start), r


def run_page(http: str, page: str, wav: Path, audio, spans, tmp: Path, verbose: bool) -> dict:
    label, path = PAGES[page]
    profile = tmp / f"profile-{page}"
    driver = make_driver(wav, profile, INIT_SCRIPT)
    try:
        driver.get(http + path)
        time.sleep(len(audio) / MIC_RATE + 3.0)
        meter = driver.execute_script("return window.__meter")
        state = driver.execute_script("return window.sdkState || window.vvState || null")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    out = np.asarray(meter["out"], dtype=float).reshape(-1, 2)
    mic = np.asarray(meter["mic"], dtype=float).reshape(-1, 2)
    if len(mic) < 100 or len(out) < 100:
        raise RuntimeError(f"{label}: no meter readings (mic {len(mic)}, output {len(out)})")
    start, r = place_wav(mic, audio, float(meter["micWindow"]))
    audible = out[out[:, 1] >= AUDIBLE, 0]
    barge, skipped = [], 0
    finals = [
        t["text"]
        for t in (state or {}).get("transcript", [])
        if t.get("final") and t.get("role") == "user"
    ]
    for i, (on_s, end_s) in enumerate(spans[1:], start=1):
        onset, end = start + on_s * 1000, start + end_s * 1000
        if not np.any((audible >= onset - 150) & (audible < onset)):
            skipped += 1
            continue
        after = audible[(audible >= onset) & (audible <= end)]
        ms = float(after.max() - onset) if after.size else 0.0
        barge.append(ms / 1000)
        if verbose:
            pauses = [round(t - onset) for t in (state or {}).get("pauses", []) if onset < t < end]
            print(f"  {page:7s} phrase {i:2d}: barge-in {ms:4.0f} ms; page pauses at {pauses} ms")
    return {"label": label, "barge": barge, "skipped": skipped, "r": r, "finals": finals}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15, help="barge-ins wanted per page")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pages", default="sdk,ours", help="comma list of: " + ",".join(PAGES))
    parser.add_argument("--verbose", action="store_true", help="print every trial")
    args = parser.parse_args()
    pages = [p for p in args.pages.split(",") if p]
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise SystemExit(
            "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"
        )

    started = time.monotonic()
    phrases = await synthesize_phrases(PHRASES)
    count = math.ceil(args.trials * 1.4) + 1  # the first phrase is no barge-in
    audio, spans = build_chain(phrases, count, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="sdk-barge-"))
    wav = tmp / "mic.wav"
    write_wav(wav, audio)
    results = {}
    bot = start_bot("vibevoice")
    try:
        http = f"http://127.0.0.1:{bot.port}"
        for page in pages:
            print(f"[{page}] {machine()} (before)")
            results[page] = run_page(http, page, wav, audio, spans, tmp, args.verbose)
            print(f"[{page}] {machine()} (after)")
    finally:
        bot.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        f"browser barge-in benchmark: {count - 1} barge-in phrases per page "
        f"({len(audio) / MIC_RATE:.0f} s of microphone), seed {args.seed}, "
        f"run time {time.monotonic() - started:.0f} s, {machine()}"
    )
    for page, res in results.items():
        goal = GOALS_MS.get(page)
        verdict = ""
        if goal is not None and res["barge"]:
            p95 = pct(res["barge"], 95) * 1000
            verdict = f"  goal p95 <= {goal} ms: {'met' if p95 <= goal else 'MISSED'}"
        print(
            f"{res['label']:15s} barge-in  {summary(res['barge'])}  (skipped {res['skipped']}, "
            f"mic fit r={res['r']:.2f}){verdict}"
        )
        print(f"{'':15s} user transcripts {len(res['finals'])}, e.g. {res['finals'][:2]}")


if __name__ == "__main__":
    asyncio.run(main())
