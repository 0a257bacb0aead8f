"""The async TTS engine: one voice model behind a streaming, cancellable API.

The engine owns the event-loop side of synthesis; backends own the model side.
A request flows as: text checks → sentence segments (lazily, so memory stays
bounded for long text) → backend chunks, pulled one per worker-thread call →
speed/pitch → resample → fixed-size PCM16 chunks. Closing the async generator
(consumer gone, task cancelled) sets the request's stop event before the next
model call, so no model work outlives its consumer by more than one chunk.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from loguru import logger

from .audio import AudioPipeline
from .backends.base import AudioPiece, BackendUnavailable, SpeechBackend, SynthesisRequest
from .config import PITCH_RANGE, SPEED_RANGE, TTSConfig
from .text import iter_segments, validate_text

_END = object()


class UnknownVoiceError(ValueError):
    """The requested voice does not exist; the message lists the voices that do."""


class EngineNotReadyError(RuntimeError):
    """The engine is not initialised (or was cleaned up)."""


class BatchResult(list):
    """Results of :meth:`TTSEngine.synthesize_batch`, in input order.

    Each item is an int16 numpy array; a failed item is an empty array and its
    exception is in :attr:`errors` under its index, so one bad text never hides the rest.
    """

    def __init__(self, items: list[np.ndarray], errors: dict[int, Exception]) -> None:
        super().__init__(items)
        self.errors = errors

    @property
    def ok(self) -> bool:
        """True when every item succeeded."""
        return not self.errors

    def failed(self) -> list[int]:
        """Indices of the items that failed."""
        return sorted(self.errors)


def check_range(name: str, value: float, bounds: tuple[float, float]) -> float:
    """Raise ``ValueError`` naming the bound that ``value`` crosses."""
    low, high = bounds
    if not isinstance(value, int | float) or value != value:  # NaN check
        raise ValueError(f"{name} must be a number within {low}..{high}, got {value!r}")
    if value < low:
        raise ValueError(f"{name}={value} is below the minimum of {low}")
    if value > high:
        raise ValueError(f"{name}={value} is above the maximum of {high}")
    return float(value)


class TTSEngine:
    """Streaming text-to-speech over a VibeVoice or Piper backend.

    Use :func:`~pipecat_vibevoice.engine.get_tts_engine` for the process-wide
    instance; construct one directly for tests or isolated use.
    """

    def __init__(
        self,
        config: TTSConfig | None = None,
        backend_factory: Callable[[TTSConfig], SpeechBackend] | None = None,
    ) -> None:
        self.config = config or TTSConfig.from_env()
        self._backend_factory = backend_factory
        self._backend: SpeechBackend | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._init_lock = threading.Lock()
        self._fallback_reason: str | None = None
        self._load_errors: list[str] = []
        self._active = 0
        self._stats = {"utterances": 0, "failures": 0, "audio_s": 0.0}

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def is_initialized(self) -> bool:
        """True once a backend is loaded."""
        return self._backend is not None

    @property
    def backend(self) -> SpeechBackend:
        """The loaded backend; raises :class:`EngineNotReadyError` before ``initialize()``."""
        if self._backend is None:
            raise EngineNotReadyError("TTS engine is not initialised: await engine.initialize()")
        return self._backend

    async def initialize(self) -> None:
        """Load the model once (idempotent, safe to call concurrently).

        Loading runs in a worker thread so the event loop keeps serving.
        """
        if self._backend is not None:
            return
        await asyncio.to_thread(self._initialize_blocking)

    def _initialize_blocking(self) -> None:
        with self._init_lock:
            if self._backend is not None:
                return
            started = time.perf_counter()
            backend = self._load_backend()
            try:
                backend.warmup()
            except Exception as exc:  # a failing warm-up is logged, real requests will tell
                logger.warning(f"TTS warm-up of {backend.name} failed: {exc}")
            workers = max(1, min(4, (self._cpu_count() or 2)))
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tts")
            self._backend = backend
            logger.info(
                f"TTS engine ready: {backend.name} ({', '.join(backend.voices()[:5])}) "
                f"in {time.perf_counter() - started:.2f}s, output {self.config.sample_rate} Hz"
            )

    @staticmethod
    def _cpu_count() -> int | None:
        import os

        return os.cpu_count()

    def _load_backend(self) -> SpeechBackend:
        from .backends import resolve_engine

        if self._backend_factory is not None:
            candidates = [("custom", self._backend_factory)]
        else:
            candidates = resolve_engine(self.config)
        last_error: Exception | None = None
        for name, factory in candidates:
            for attempt in range(1, self.config.load_retries + 1):
                try:
                    backend = factory(self.config)
                    backend.load()
                    if name != candidates[0][0]:
                        self._fallback_reason = (
                            f"{candidates[0][0]} unavailable ({last_error}); "
                            f"serving the bundled {name} voice"
                        )
                        logger.warning(f"TTS fallback: {self._fallback_reason}")
                    return backend
                except BackendUnavailable as exc:
                    # Missing weights or packages: retrying cannot help.
                    last_error = exc
                    self._load_errors.append(f"{name}: {exc}")
                    logger.warning(f"TTS backend {name} unavailable: {exc}")
                    break
                except Exception as exc:
                    last_error = exc
                    self._load_errors.append(f"{name} attempt {attempt}: {exc!r}")
                    logger.warning(
                        f"TTS backend {name} failed to load "
                        f"(attempt {attempt}/{self.config.load_retries}): {exc!r}"
                    )
                    if attempt < self.config.load_retries:
                        time.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))
        raise RuntimeError(
            "no TTS backend could be loaded: " + "; ".join(self._load_errors)
        ) from last_error

    async def cleanup(self) -> None:
        """Free the model (and the CUDA cache). The engine can be initialised again."""
        backend, self._backend = self._backend, None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if backend is not None:
            await asyncio.to_thread(backend.unload)
            logger.info(f"TTS engine {backend.name} cleaned up")
        gc.collect()
        _empty_cuda_cache()

    # -- voices -------------------------------------------------------------------------

    async def get_available_speakers(self) -> list[str]:
        """Voice names, default first; ``speaker_id`` accepts a name or an index into this."""
        return list(self.backend.voices())

    def resolve_voice(self, speaker_id: int | str | None) -> str:
        """Map an index or a name (case-insensitive) to a voice name."""
        voices = self.backend.voices()
        if speaker_id is None or speaker_id == 0 or speaker_id == "":
            if self.config.default_voice:
                return self.resolve_voice(self.config.default_voice)
            return voices[0]
        if isinstance(speaker_id, bool):
            raise UnknownVoiceError(f"speaker_id must be an int or a name, got {speaker_id!r}")
        if isinstance(speaker_id, int):
            if 0 <= speaker_id < len(voices):
                return voices[speaker_id]
            raise UnknownVoiceError(
                f"speaker index {speaker_id} out of range 0..{len(voices) - 1}; "
                f"voices: {', '.join(voices)}"
            )
        if isinstance(speaker_id, str):
            wanted = speaker_id.strip().lower()
            for voice in voices:
                if voice.lower() == wanted:
                    return voice
            matches = [v for v in voices if wanted and wanted in v.lower()]
            if len(matches) == 1:
                return matches[0]
        raise UnknownVoiceError(
            f"unknown voice {speaker_id!r}; available voices: {', '.join(voices)}"
        )

    # -- synthesis ----------------------------------------------------------------------

    async def synthesize_streaming(
        self,
        text: str,
        speaker_id: int | str | None = 0,
        speed: float = 1.0,
        pitch: float = 1.0,
        **options: Any,
    ) -> AsyncIterator[bytes]:
        """Yield 16-bit little-endian mono PCM chunks at ``config.sample_rate``.

        Every chunk but the last is exactly ``config.chunk_ms`` long (with streaming
        off, the whole utterance comes as one chunk). Raises ``ValueError`` subclasses
        for bad input before any audio; ``speed``/``pitch`` take 0.5..2.0.
        Extra ``options`` go to the backend (VibeVoice: ``cfg_scale``, ``inference_steps``).
        """
        speed = check_range("speed", speed, SPEED_RANGE)
        pitch = check_range("pitch", pitch, PITCH_RANGE)
        text = validate_text(text, self.config.max_text_chars)
        await self.initialize()
        backend = self.backend
        voice = self.resolve_voice(speaker_id)
        request = SynthesisRequest(text=text, voice=voice, speed=speed, options=options)
        pipeline = AudioPipeline(
            in_rate=backend.sample_rate,
            out_rate=self.config.sample_rate,
            chunk_samples=self.config.chunk_samples if self.config.streaming else None,
            speed=1.0 if backend.native_speed else speed,
            pitch=pitch,
        )
        self._active += 1
        started = time.perf_counter()
        first_chunk_at: float | None = None
        outcome = "ok"
        whole: list[bytes] = []
        pieces = self._pull(backend, request)
        try:
            async for piece in pieces:
                for chunk in pipeline.push(piece.audio):
                    if not self.config.streaming:
                        whole.append(chunk)
                        continue
                    if first_chunk_at is None:
                        first_chunk_at = time.perf_counter()
                    yield chunk
            for chunk in pipeline.finish():
                if not self.config.streaming:
                    whole.append(chunk)
                    continue
                if first_chunk_at is None:
                    first_chunk_at = time.perf_counter()
                yield chunk
            if whole:
                first_chunk_at = time.perf_counter()
                yield b"".join(whole)
            if pipeline.samples_out == 0:
                logger.warning(f"TTS produced no audio for text {text[:60]!r}")
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "error"
            self._stats["failures"] += 1
            raise
        finally:
            request.stop.set()
            await pieces.aclose()
            self._active -= 1
            self._stats["utterances"] += 1
            audio_s = pipeline.samples_out / self.config.sample_rate
            self._stats["audio_s"] += audio_s
            total = time.perf_counter() - started
            ttfc = f"{(first_chunk_at - started) * 1000:.0f}ms" if first_chunk_at else "n/a"
            logger.debug(
                f"TTS {outcome}: voice={voice} chars={len(text)} audio={audio_s:.2f}s "
                f"first_chunk={ttfc} total={total:.2f}s"
            )

    async def _pull(
        self, backend: SpeechBackend, request: SynthesisRequest
    ) -> AsyncIterator[AudioPiece]:
        """Run the backend in the worker pool, one chunk per call, segment by segment."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        for segment in iter_segments(request.text):
            if request.stop.is_set():
                return
            segment_request = SynthesisRequest(
                text=segment,
                voice=request.voice,
                speed=request.speed,
                stop=request.stop,
                options=request.options,
            )
            stream = _SerialIterator(backend.stream(segment_request))
            try:
                while True:
                    piece = await loop.run_in_executor(executor, stream.next)
                    if piece is _END:
                        break
                    yield piece
            finally:
                # A worker may still be inside next(); closing takes the same lock, so
                # the backend generator is closed right after that one chunk, in a
                # worker, without making the cancelled consumer wait for it.
                _submit_or_run(executor, stream.close)

    async def synthesize(
        self,
        text: str,
        speaker_id: int | str | None = 0,
        speed: float = 1.0,
        pitch: float = 1.0,
        **options: Any,
    ) -> np.ndarray:
        """Whole utterance as one int16 array (convenience over the stream)."""
        parts = [
            chunk
            async for chunk in self.synthesize_streaming(text, speaker_id, speed, pitch, **options)
        ]
        return np.frombuffer(b"".join(parts), dtype="<i2").copy()

    async def synthesize_batch(
        self,
        texts: list[str],
        speaker_ids: list[int | str | None] | None = None,
        *,
        speed: float = 1.0,
        pitch: float = 1.0,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> BatchResult:
        """Synthesise many texts; results in input order, failures reported per item.

        Items run concurrently up to the worker pool size. ``on_progress(done, total)``
        is called after each item (for progress bars).
        """
        if speaker_ids is not None and len(speaker_ids) != len(texts):
            raise ValueError(f"speaker_ids has {len(speaker_ids)} entries for {len(texts)} texts")
        await self.initialize()
        ids = speaker_ids if speaker_ids is not None else [0] * len(texts)
        results: list[np.ndarray] = [np.zeros(0, np.int16)] * len(texts)
        errors: dict[int, Exception] = {}
        limit = asyncio.Semaphore(max(1, getattr(self._executor, "_max_workers", 2)))
        done = 0

        async def one(index: int) -> None:
            nonlocal done
            async with limit:
                try:
                    results[index] = await self.synthesize(texts[index], ids[index], speed, pitch)
                except Exception as exc:
                    errors[index] = exc
                    logger.warning(f"batch item {index} failed: {exc}")
            done += 1
            if on_progress is not None:
                on_progress(done, len(texts))

        await asyncio.gather(*(one(i) for i in range(len(texts))))
        return BatchResult(results, errors)

    # -- health -------------------------------------------------------------------------

    async def health_check(self) -> dict[str, Any]:
        """State for ``/health``: ``status`` is ok, degraded (fell back), or not_initialized."""
        info: dict[str, Any] = {
            "streaming_enabled": self.config.streaming,
            "sample_rate": self.config.sample_rate,
            "chunk_ms": self.config.chunk_ms,
            "requested_engine": self.config.engine,
            "active_streams": self._active,
            **self._stats,
        }
        if self._backend is None:
            info.update(status="not_initialized", model=None, engine=None)
            if self._load_errors:
                info["load_errors"] = list(self._load_errors)
            return info
        described = self._backend.describe()
        info.update(described)
        info["model"] = described.get("model", self._backend.name)
        info["voices"] = self._backend.voices()
        info["status"] = "degraded" if self._fallback_reason else "ok"
        if self._fallback_reason:
            info["fallback_reason"] = self._fallback_reason
        return info


class _SerialIterator:
    """A blocking iterator driven from worker threads, one call at a time."""

    def __init__(self, iterator: Iterator[AudioPiece]) -> None:
        self._iterator = iterator
        self._lock = threading.Lock()

    def next(self) -> Any:
        with self._lock:
            return next(self._iterator, _END)

    def close(self) -> None:
        with self._lock:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()


def _submit_or_run(executor: ThreadPoolExecutor | None, fn: Callable[[], None]) -> None:
    try:
        if executor is None:
            raise RuntimeError("no executor")
        executor.submit(fn)
    except RuntimeError:  # executor shut down (cleanup raced a stream)
        threading.Thread(target=fn, name="tts-close", daemon=True).start()


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
