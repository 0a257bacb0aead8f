"""How speed and pitch change the bundled voice's quality: DNSMOS and Whisper WER.

Every grid setting (speed 0.5-2.0 at pitch 1, pitch 0.5-2.0 at speed 1, 0.25 steps)
is spoken by our streaming engine (Piper, 16 kHz, 80 ms chunks, ``seed`` per sentence)
on six held-out sentences (none of the test phrases) and scored, in the same run,
against plain Piper (``PiperVoice.synthesize`` at its default settings, resampled to
16 kHz, its noise seeded like the rows': sentence i takes ``--seed`` + i, default 0):

* DNSMOS OVRL (``speechmos.dnsmos.run``; its ONNX models ship in the package, nothing
  is downloaded), the mean over the sentences;
* WER of the bundled faster-whisper tiny.en (beam 5) against the text (``jiwer``,
  lower case, punctuation dropped), over all sentences together.

``--pitch-method`` scores a candidate pitch method instead of the engine's own for the
pitch rows: ``psola`` (Praat's PSOLA through ``praat-parselmouth``; it leaves the pitch
unchanged where the new F0 falls below the 60 Hz floor, as at 0.5 on this voice) or ``world``
(``pyworld``: F0 scaled, spectral envelope kept), each applied to the engine's audio
at pitch 1, whole sentence at once, an upper bound of what it can do streaming.

``--first-chunk`` measures instead the time to the first chunk (engine call to first
chunk, warm, 24 kHz, a 25-word sentence as in ``bench/engine_latency.py``) at default
settings and at non-default speed and pitch, each engine in its own process, rounds
interleaved; with ``--ref-src DIR`` (the ``src`` of a git worktree of an older commit)
the default setting runs on that code too, in the same rounds: the same-run A/B.

Prints a table, the run time and the machine load; writes a plot (``--plot``; the
full grid of both kinds writes ``docs/speed_pitch_quality.png`` by default). Goals (the issue): OVRL >= plain - 0.1 at
speed 0.75 and 1.5 and pitch 0.8 and 1.25 (0.75/1.25 on this grid), >= 3.0 everywhere;
WER <= 0.10 within 0.75-1.5. Reported, never asserted.

    .venv/bin/python bench/speed_pitch_quality.py [--pitch-method engine|psola|world]
    .venv/bin/python bench/speed_pitch_quality.py --first-chunk [--ref-src /tmp/old/src]
    .venv/bin/python bench/speed_pitch_quality.py --round-trip

``--round-trip`` asks whether a lowered pitch scores low for the shifter or for the pitch
it reaches: the engine's audio at pitch 1 through :class:`PitchShifter` once or twice
(0.8; 1.25 then 0.8, which ends at the voice's own F0; 0.9 twice), DNSMOS OVRL, SIG and
BAK for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soxr

SENTENCES = [
    "The museum opens its new wing to visitors next Thursday morning.",
    "Could you send me the invoice before the end of the week, please?",
    "Heavy snow closed the mountain pass for almost three days.",
    "My grandmother grew tomatoes, beans and sunflowers behind the old barn.",
    "The train to the airport leaves every twenty minutes from platform four.",
    "We tried the recipe twice, and the second cake was much better.",
]
GRID = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
RATE = 16000
ROOT = Path(__file__).resolve().parent.parent


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


class Scorer:
    def __init__(self) -> None:
        from faster_whisper import WhisperModel
        from speechmos import dnsmos

        from pipecat_vibevoice.pipeline.models import bundled_whisper_path

        self._dnsmos = dnsmos
        self._whisper = WhisperModel(
            str(bundled_whisper_path()), device="cpu", compute_type="int8", cpu_threads=2
        )

    def score(self, clips: list[np.ndarray]) -> tuple[float, float]:
        import jiwer

        mos = [
            float(self._dnsmos.run(np.clip(c, -1, 1).astype(np.float32), RATE)["ovrl_mos"])
            for c in clips
        ]
        heard = []
        for clip in clips:
            segments, _ = self._whisper.transcribe(
                clip.astype(np.float32), beam_size=5, language="en"
            )
            heard.append(words(" ".join(s.text for s in segments)))
        wer = jiwer.wer([words(s) for s in SENTENCES], heard)
        return float(np.mean(mos)), float(wer)


def plain_piper(seed: int | None = None) -> list[np.ndarray]:
    """``PiperVoice.synthesize`` at its defaults; with ``seed``, sentence i's noise is fixed.

    VITS samples its duration and prior noise inside the graph, so an unseeded plain
    Piper moves by ~0.1 OVRL between runs and a row's difference from it is partly
    noise. Seeded, sentence i gets the noise of ``seed + i``, the very seeds
    :func:`engine_clips` passes the engine (``stamp_seed`` numbers the graph's noise
    nodes as ``streaming_vits`` does for the engine's front half), so plain and every
    row differ only by the control. onnxruntime replays a seed only on a fresh
    session's first run: one session per sentence.
    """
    import onnx
    import onnxruntime as ort
    from piper import PiperVoice
    from streaming_vits.graph import _stamp_seed as stamp_seed

    from pipecat_vibevoice.engine.backends.piper import bundled_voice_files

    model, config = bundled_voice_files()
    voice = PiperVoice.load(model, config)
    graph = onnx.load(str(model)) if seed is not None else None
    clips = []
    for i, text in enumerate(SENTENCES):
        if graph is not None:
            seeded = onnx.ModelProto()
            seeded.CopyFrom(graph)
            stamp_seed(seeded, seed + i)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 2
            voice.session = ort.InferenceSession(
                seeded.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        chunks = list(voice.synthesize(text))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        clips.append(soxr.resample(audio, chunks[0].sample_rate, RATE, quality="HQ"))
    return clips


async def engine_clips(
    engine, speed: float = 1.0, pitch: float = 1.0, seed: int = 0
) -> list[np.ndarray]:
    """The engine's audio for every sentence; sentence i is spoken with seed ``seed + i``."""
    from pipecat_vibevoice.engine.audio import pcm16_to_float

    clips = []
    for i, text in enumerate(SENTENCES):
        pcm = b"".join(
            [
                c.pcm
                async for c in engine.stream_chunks(text, speed=speed, pitch=pitch, seed=seed + i)
            ]
        )
        clips.append(pcm16_to_float(pcm))
    return clips


def candidate_pitch(method: str, audio: np.ndarray, pitch: float) -> np.ndarray:
    """A candidate pitch method on a whole clip at ``RATE`` (duration kept)."""
    if method == "psola":
        import parselmouth
        from parselmouth.praat import call

        sound = parselmouth.Sound(audio.astype(np.float64), RATE)
        manipulation = call(sound, "To Manipulation", 0.01, 60, 400)
        tier = call(manipulation, "Extract pitch tier")
        call(tier, "Multiply frequencies", sound.xmin, sound.xmax, pitch)
        call([tier, manipulation], "Replace pitch tier")
        out = call(manipulation, "Get resynthesis (overlap-add)")
        return np.asarray(out.values[0], dtype=np.float32)
    if method == "world":
        import pyworld

        x = audio.astype(np.float64)
        f0, t = pyworld.harvest(x, RATE)
        sp = pyworld.cheaptrick(x, f0, t, RATE)
        ap = pyworld.d4c(x, f0, t, RATE)
        return pyworld.synthesize(f0 * pitch, sp, ap, RATE).astype(np.float32)
    raise ValueError(method)


def plot(rows: list[tuple[str, float, float, float]], plain: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("speed", "o"), ("pitch", "s")):
        pts = [(v, mos, wer) for k, v, mos, wer in rows if k == kind]
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker=marker, label=kind)
        axes[1].plot(xs, [p[2] for p in pts], marker=marker, label=kind)
    axes[0].axhline(plain, color="grey", ls="--", label="plain Piper")
    axes[0].axhline(plain - 0.1, color="grey", ls=":", label="plain - 0.1")
    axes[0].axhline(3.0, color="red", ls=":", label="3.0")
    axes[0].set(xlabel="factor", ylabel="DNSMOS OVRL", title="quality")
    axes[1].axhline(0.10, color="red", ls=":", label="0.10")
    axes[1].set(xlabel="factor", ylabel="Whisper tiny.en WER", title="intelligibility")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


FIRST_CHUNK_TEXT = (
    "The weather update for this afternoon says that light rain will move in "
    "from the west, so please remember to bring an umbrella along today."
)
FIRST_CHUNK_SETTINGS = [(1.0, 1.0), (1.0, 0.8), (1.0, 1.25), (1.0, 2.0), (1.5, 1.0), (2.0, 1.0)]


async def first_chunk_worker() -> None:
    """Answer ``speed pitch`` lines with the warm first-chunk time in ms (one engine)."""
    from pipecat_vibevoice.engine import TTSConfig, TTSEngine

    engine = TTSEngine(TTSConfig(engine="piper"))
    await engine.initialize()
    print("ready", flush=True)
    for line in sys.stdin:
        speed, pitch = (float(v) for v in line.split())
        started = time.perf_counter()
        async for _ in engine.stream_chunks(FIRST_CHUNK_TEXT, speed=speed, pitch=pitch):
            print(f"{(time.perf_counter() - started) * 1000:.2f}", flush=True)
            break
    await engine.cleanup()


def first_chunk(runs: int, ref_src: Path | None) -> None:
    """Interleaved rounds over every (tree, setting); p50/p95 per row."""
    trees = {"this tree": ROOT / "src"}
    if ref_src is not None:
        trees["reference"] = ref_src.resolve()
    procs = {}
    for name, src in trees.items():
        env = {**os.environ, "PYTHONPATH": str(src), "LOGURU_LEVEL": "WARNING"}
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "--first-chunk-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        while procs[name].stdout.readline().strip() != "ready":
            pass
    rows = [("this tree", s) for s in FIRST_CHUNK_SETTINGS]
    if ref_src is not None:
        rows.insert(1, ("reference", (1.0, 1.0)))
    times: dict[tuple, list[float]] = {row: [] for row in rows}
    started, load0 = time.perf_counter(), os.getloadavg()
    for i in range(runs + 2):
        order = rows[i % len(rows) :] + rows[: i % len(rows)]  # rotate the order each round
        for tree, (speed, pitch) in order:
            proc = procs[tree]
            proc.stdin.write(f"{speed} {pitch}\n")
            proc.stdin.flush()
            ms = float(proc.stdout.readline())
            if i >= 2:  # two warm-up rounds
                times[(tree, (speed, pitch))].append(ms)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    load1 = os.getloadavg()
    print("| code | speed | pitch | first chunk p50 (ms) | p95 (ms) |")
    print("|---|---|---|---|---|")
    for (tree, (speed, pitch)), ms in times.items():
        p50, p95 = np.percentile(ms, [50, 95])
        print(f"| {tree} | {speed:g} | {pitch:g} | {p50:.1f} | {p95:.1f} |")
    print(
        f"\n{runs} runs each, interleaved; {time.perf_counter() - started:.0f} s; load average "
        f"(1 min) {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC"
    )
    print(
        json.dumps({f"{t} {s[0]:g}/{s[1]:g}": float(np.median(v)) for (t, s), v in times.items()})
    )


ROUND_TRIPS = [("1.0", []), ("0.8", [0.8]), ("1.25", [1.25]), ("1.25 then 0.8 (net 1.0)", [1.25, 0.8]),
               ("0.8 then 1.25 (net 1.0)", [0.8, 1.25]), ("0.9", [0.9]), ("0.9 twice (net 0.81)", [0.9, 0.9]),
               ("0.75", [0.75]), ("0.5", [0.5])]  # fmt: skip


async def round_trip(seed: int) -> None:
    """DNSMOS of the shifter applied once or twice (see the module doc)."""
    from speechmos import dnsmos

    from pipecat_vibevoice.engine import TTSConfig, TTSEngine
    from pipecat_vibevoice.engine.pitch import PitchShifter

    def scores(clips: list[np.ndarray]) -> str:
        runs = [dnsmos.run(np.clip(c, -1, 1).astype(np.float32), RATE) for c in clips]
        mean = {k: np.mean([r[k] for r in runs]) for k in ("ovrl_mos", "sig_mos", "bak_mos")}
        return f"{mean['ovrl_mos']:.2f} | {mean['sig_mos']:.2f} | {mean['bak_mos']:.2f}"

    started = time.perf_counter()
    engine = TTSEngine(TTSConfig(engine="piper", sample_rate=RATE))
    await engine.initialize()
    try:
        base = await engine_clips(engine, 1.0, 1.0, seed)
    finally:
        await engine.cleanup()
    print(f"seed {seed} (sentence i: {seed} + i), plain Piper seeded alike")
    print("| pitch through the shifter | OVRL | SIG | BAK |\n|---|---|---|---|")
    print(f"| plain Piper | {scores(plain_piper(seed))} |")
    for name, factors in ROUND_TRIPS:
        clips = base
        for factor in factors:
            clips = [PitchShifter(RATE, factor).process(c, last=True) for c in clips]
        print(f"| {name} | {scores(clips)} |", flush=True)
    print(
        f"\nrun time {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pitch-method", default="engine", choices=["engine", "psola", "world"])
    parser.add_argument(
        "--plot",
        type=Path,
        help="write the plot here (default: docs/speed_pitch_quality.png, only for the "
        "full grid of both kinds, so a partial run never replaces the README's plot)",
    )
    parser.add_argument("--kinds", default="speed,pitch", help="rows to score (comma list)")
    parser.add_argument("--grid", help="factors to score (comma list; default 0.5-2.0 by 0.25)")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help="first N only")
    parser.add_argument("--first-chunk", action="store_true", help="first-chunk times instead")
    parser.add_argument("--ref-src", type=Path, help="with --first-chunk: older code's src/")
    parser.add_argument("--runs", type=int, default=20, help="with --first-chunk: runs per row")
    parser.add_argument(
        "--round-trip", action="store_true", help="the shifter once or twice: shifter or F0?"
    )
    parser.add_argument(
        "--no-cascade",
        action="store_true",
        help="speed-ups as one 46 ms WSOLA stage (before SpeedPitchStage.SHORT_CASCADE)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sentence i (plain Piper and every row): seed + i"
    )
    parser.add_argument("--first-chunk-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round_trip:
        await round_trip(args.seed)
        return
    if args.first_chunk_worker:
        await first_chunk_worker()
        return
    if args.first_chunk:
        first_chunk(args.runs, args.ref_src)
        return
    grid = [float(v) for v in args.grid.split(",")] if args.grid else GRID
    del SENTENCES[args.sentences :]

    from pipecat_vibevoice.engine import TTSConfig, TTSEngine
    from pipecat_vibevoice.engine.audio import SpeedPitchStage

    if args.no_cascade:
        SpeedPitchStage.SHORT_CASCADE = False
    started, load0 = time.perf_counter(), os.getloadavg()
    scorer = Scorer()
    plain_mos, plain_wer = scorer.score(plain_piper(args.seed))
    engine = TTSEngine(TTSConfig(engine="piper", sample_rate=RATE))
    await engine.initialize()
    rows: list[tuple[str, float, float, float]] = []
    try:
        base = await engine_clips(engine, 1.0, 1.0, args.seed)
        for kind in args.kinds.split(","):
            for value in grid:
                if kind == "pitch" and args.pitch_method != "engine" and value != 1.0:
                    clips = [candidate_pitch(args.pitch_method, c, value) for c in base]
                elif value == 1.0:
                    clips = base
                else:
                    settings = {"speed": value} if kind == "speed" else {"pitch": value}
                    clips = await engine_clips(engine, **settings, seed=args.seed)
                mos, wer = scorer.score(clips)
                rows.append((kind, value, mos, wer))
                print(f"  {kind} {value:.2f}: OVRL {mos:.2f} WER {wer:.3f}", flush=True)
    finally:
        await engine.cleanup()
    elapsed, load1 = time.perf_counter() - started, os.getloadavg()

    cascade = SpeedPitchStage.SHORT_CASCADE
    print(
        f"\npitch method: {args.pitch_method}; speed-up: "
        + (
            f"23 ms WSOLA stages of at most {SpeedPitchStage.SHORT_STAGE_MAX_TEMPO:g}x"
            if cascade
            else "one 46 ms WSOLA stage"
        )
    )
    print(f"seed {args.seed} (sentence i: {args.seed} + i; plain Piper and every row alike)")
    print(f"plain Piper: OVRL {plain_mos:.2f}, WER {plain_wer:.3f}")
    print("| setting | DNSMOS OVRL | Δ vs plain | WER |")
    print("|---|---|---|---|")
    for kind, value, mos, wer in rows:
        print(f"| {kind} {value:.2f} | {mos:.2f} | {mos - plain_mos:+.2f} | {wer:.3f} |")
    cpus = os.cpu_count()
    print(
        f"\nrun time {elapsed:.0f} s on {cpus} CPUs; load average (1 min) "
        f"{load0[0]:.2f} at start, {load1[0]:.2f} at end"
    )
    path = args.plot
    full_run = (
        args.grid is None
        and set(args.kinds.split(",")) == {"speed", "pitch"}
        and args.sentences == parser.get_default("sentences")
    )
    if path is None and full_run:
        path = ROOT / "docs" / "speed_pitch_quality.png"
    if path is not None:
        plot(rows, plain_mos, path)
        print(f"plot: {path}")


if __name__ == "__main__":
    asyncio.run(main())
