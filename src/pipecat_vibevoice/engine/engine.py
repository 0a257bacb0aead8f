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
import contextlib
import gc
import os
import threading
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
from loguru import logger

from .audio import AudioPipeline
from .backends.base import (
    AudioPiece,
    BackendUnavailable,
    SpeechBackend,
    SynthesisRequest,
    TextSource,
)
from .chunks import SpanTimeline, SpeechChunk, align, iter_stream_sentences, map_span
from .config import TTSConfig
from .controls import CONTROLS, PITCH, SPEED
from .text import (
    EmptyTextError,
    TextError,
    TextTooLongError,
    clean_text,
    iter_segments,
    validate_text,
)

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
        self._cut_short = False  # a stream ended early since the model was last idle
        self._stats = {"utterances": 0, "failures": 0, "audio_s": 0.0}
        # Admission gate for batching backends (see _stream_slots), one per event loop.
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None

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
            self._executor = ThreadPoolExecutor(_pool_width(backend), thread_name_prefix="tts")
            self._backend = backend
            logger.info(
                f"TTS engine ready: {backend.name} ({', '.join(backend.voices()[:5])}) "
                f"in {time.perf_counter() - started:.2f}s, output {self.config.sample_rate} Hz"
            )

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

    @property
    def executor(self) -> Executor | None:
        """The pool model calls run on (None before ``initialize()``)."""
        return self._executor

    @property
    def workers(self) -> int:
        """Model calls that run at once: the width of the engine's worker pool."""
        return max(1, getattr(self._executor, "_max_workers", 1))

    def replace_executor(self, executor: Executor) -> Executor | None:
        """Run model calls on ``executor`` from now on; returns the previous pool.

        For servers that order model work themselves (the serving API's deadline
        scheduler). The caller shuts the old pool down. Requires an initialised engine.
        """
        if self._backend is None:
            raise EngineNotReadyError("initialise the engine before replacing its pool")
        previous, self._executor = self._executor, executor
        return previous

    async def cleanup(self) -> None:
        """Free the model (and the CUDA cache). The engine can be initialised again."""
        backend, self._backend = self._backend, None
        executor, self._executor = self._executor, None
        self._slots = self._slots_loop = None  # the next backend may serve another width
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
        text: str | AsyncIterable[str],
        speaker_id: int | str | None = 0,
        speed: float = 1.0,
        pitch: float = 1.0,
        **options: Any,
    ) -> AsyncIterator[bytes]:
        """Yield 16-bit little-endian mono PCM chunks at ``config.sample_rate``.

        ``text`` is a string, or an async iterable of text pieces (e.g. LLM tokens):
        VibeVoice consumes those as they arrive (speech starts once its first 5-token
        window is there); other backends get each sentence as soon as it is complete.
        Every chunk but the last is exactly ``config.chunk_ms`` long (with streaming
        off, the whole utterance comes as one chunk). Raises ``ValueError`` subclasses
        for bad input before any audio; ``speed``/``pitch`` take 0.5..2.0.
        Extra ``options`` go to the backend: ``seed`` (both engines: the same seed and
        settings give the same audio; without it every call samples anew), and for
        VibeVoice ``cfg_scale`` and ``inference_steps``. Backends ignore keys they do
        not read. :meth:`stream_chunks` gives the same audio with timestamps and text.
        """
        chunks = self.stream_chunks(text, speaker_id, speed, pitch, **options)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk.pcm

    async def stream_chunks(
        self,
        text: str | AsyncIterable[str],
        speaker_id: int | str | None = 0,
        speed: float = 1.0,
        pitch: float = 1.0,
        **options: Any,
    ) -> AsyncIterator[SpeechChunk]:
        """Like :meth:`synthesize_streaming`, with each chunk's time and text span.

        Spans index the cleaned text for a ``str`` and the concatenated pieces for a
        stream; see :class:`~pipecat_vibevoice.engine.chunks.SpeechChunk`.
        """
        speed = SPEED.check(speed)
        pitch = PITCH.check(pitch)
        options = {
            k: CONTROLS[k].check(v) if k in CONTROLS and v is not None else v
            for k, v in options.items()
        }
        pieces: AsyncIterable[str] | None = None
        if isinstance(text, str):
            text = validate_text(text, self.config.max_text_chars)
        elif isinstance(text, AsyncIterable):
            pieces, text = text, ""
        else:
            raise TextError(
                f"text must be a str or an async iterable of str, got {type(text).__name__}"
            )
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
        ratio = (
            self.config.sample_rate / backend.sample_rate / (1.0 if backend.native_speed else speed)
        )
        timeline = SpanTimeline(ratio)
        collected: list[str] = []  # streamed text so far (for spans)
        self._active += 1
        started = time.perf_counter()
        first_chunk_at: float | None = None
        outcome = "ok"
        whole: list[bytes] = []
        emitted = 0  # output samples emitted so far
        rate = self.config.sample_rate

        def make_chunk(pcm: bytes) -> SpeechChunk:
            nonlocal emitted
            n = len(pcm) // 2
            span = timeline.span(emitted, emitted + n)
            full = text or "".join(collected)
            chunk = SpeechChunk(
                pcm=pcm,
                start_s=emitted / rate,
                end_s=(emitted + n) / rate,
                text_span=span,
                text=full[span[0] : span[1]] if span else "",
            )
            emitted += n
            return chunk

        if pieces is None:
            source = self._pull(backend, request)
        elif backend.supports_text_stream:
            source = self._pull_text_stream(backend, request, pieces, collected)
        else:
            source = self._pull_sentences(backend, request, pieces, collected)
        try:
            async for piece in source:
                timeline.add(piece.audio.size, piece.text_span)
                for pcm in pipeline.push(piece.audio):
                    if not self.config.streaming:
                        whole.append(pcm)
                        continue
                    if first_chunk_at is None:
                        first_chunk_at = time.perf_counter()
                    yield make_chunk(pcm)
            for pcm in pipeline.finish():
                if not self.config.streaming:
                    whole.append(pcm)
                    continue
                if first_chunk_at is None:
                    first_chunk_at = time.perf_counter()
                yield make_chunk(pcm)
            if whole:
                first_chunk_at = time.perf_counter()
                yield make_chunk(b"".join(whole))
            if pieces is not None and not "".join(collected).strip():
                raise EmptyTextError("the text stream carried no speakable text")
            if pipeline.samples_out == 0:
                logger.warning(
                    f"TTS produced no audio for text {(text or ''.join(collected))[:60]!r}"
                )
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "error"
            self._stats["failures"] += 1
            raise
        finally:
            request.stop.set()
            await source.aclose()
            self._active -= 1
            self._cut_short = self._cut_short or outcome != "ok"
            if self._active == 0 and self._cut_short:
                # A stream stopped before its end keeps the model's scratch memory;
                # with nothing else running, give it back now (off the audio path).
                self._cut_short = False
                _submit_or_run(self._executor, backend.release_idle_memory)
            self._stats["utterances"] += 1
            audio_s = pipeline.samples_out / self.config.sample_rate
            self._stats["audio_s"] += audio_s
            total = time.perf_counter() - started
            ttfc = f"{(first_chunk_at - started) * 1000:.0f}ms" if first_chunk_at else "n/a"
            chars = len(text) if pieces is None else sum(map(len, collected))
            logger.debug(
                f"TTS {outcome}: voice={voice} chars={chars} audio={audio_s:.2f}s "
                f"first_chunk={ttfc} total={total:.2f}s"
            )

    async def _pull(
        self, backend: SpeechBackend, request: SynthesisRequest
    ) -> AsyncIterator[AudioPiece]:
        """Run the backend in the worker pool, one chunk per call, segment by segment.

        Text spans are mapped from each segment to the request text; a backend that
        reports none gets its segment's span.
        """
        cursor = 0
        for segment in iter_segments(request.text):
            if request.stop.is_set():
                return
            mapping, cursor = align(segment, request.text, cursor)
            async with contextlib.aclosing(self._pull_one(backend, request, segment)) as inner:
                async for piece in inner:
                    yield _respan(piece, mapping, len(request.text))

    async def _pull_sentences(
        self,
        backend: SpeechBackend,
        request: SynthesisRequest,
        pieces: AsyncIterable[str],
        collected: list[str],
    ) -> AsyncIterator[AudioPiece]:
        """Streamed text for a backend without native support: sentence by sentence."""
        sentences = iter_stream_sentences(pieces, collected, self.config.max_text_chars)
        async with contextlib.aclosing(sentences):
            async for raw, offset in sentences:
                if request.stop.is_set():
                    return
                full = "".join(collected)
                position = offset
                for segment in iter_segments(clean_text(raw)):
                    mapping, position = align(segment, full, position)
                    inner = self._pull_one(backend, request, segment)
                    async with contextlib.aclosing(inner):
                        async for piece in inner:
                            yield _respan(piece, mapping, offset + len(raw))

    async def _pull_text_stream(
        self,
        backend: SpeechBackend,
        request: SynthesisRequest,
        pieces: AsyncIterable[str],
        collected: list[str],
    ) -> AsyncIterator[AudioPiece]:
        """Streamed text for a backend that reads it as it arrives (VibeVoice).

        A feeder task copies the pieces into the request's :class:`TextSource` while the
        backend speaks; when the backend runs out of text it yields a waiting piece and
        we await new text instead of blocking a worker thread.
        """
        source = TextSource()
        request.text_source = request.text_source or source
        failure: list[BaseException] = []

        async def feed() -> None:
            total = 0
            try:
                async for piece in pieces:
                    if not isinstance(piece, str):
                        raise TypeError(
                            f"text stream pieces must be str, got {type(piece).__name__}"
                        )
                    piece = _clean_piece(piece)
                    total += len(piece)
                    if total > self.config.max_text_chars:
                        raise TextTooLongError(
                            "text stream exceeded the limit of "
                            f"{self.config.max_text_chars} characters"
                        )
                    collected.append(piece)
                    source.append(piece)
            except BaseException as exc:  # reported to the consumer below
                failure.append(exc)
            finally:
                source.close()

        feeder = asyncio.create_task(feed(), name="tts-text-feed")
        try:
            inner = self._pull_one(backend, request, "")
            async with contextlib.aclosing(inner):
                async for piece in inner:
                    if piece.waiting_for_text:
                        await source.wait_for_news()
                        continue
                    if failure:
                        break
                    yield piece
            if failure and not isinstance(failure[0], asyncio.CancelledError):
                raise failure[0]
        finally:
            if not feeder.done():
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder

    def _stream_slots(self, backend: SpeechBackend) -> asyncio.Semaphore | None:
        """The gate that admits at most ``backend.concurrent_streams()`` streams at once.

        A batching backend blocks a worker thread per running stream until its next
        batched step; a stream queued inside the backend would block one too, and with
        enough of them every worker would wait on a queued stream while the running
        ones never get a thread to take their audio. Extra streams therefore wait here,
        on the event loop, holding no thread. None for backends that do not batch.
        """
        limit = backend.concurrent_streams()
        if not limit:
            return None
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(limit), loop
        return self._slots

    async def _pull_one(
        self, backend: SpeechBackend, request: SynthesisRequest, text: str
    ) -> AsyncIterator[AudioPiece]:
        """One backend ``stream`` call, pulled one piece per worker call."""
        slots = self._stream_slots(backend)
        async with slots if slots is not None else contextlib.nullcontext():
            async with contextlib.aclosing(self._pull_admitted(backend, request, text)) as inner:
                async for piece in inner:
                    yield piece

    async def _pull_admitted(
        self, backend: SpeechBackend, request: SynthesisRequest, text: str
    ) -> AsyncIterator[AudioPiece]:
        """The pulling of :meth:`_pull_one`, once the stream may run."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        segment_request = SynthesisRequest(
            text=text,
            voice=request.voice,
            speed=request.speed,
            stop=request.stop,
            options=request.options,
            text_source=request.text_source,
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
        **options: Any,
    ) -> BatchResult:
        """Synthesise many texts; results in input order, failures reported per item.

        Items run concurrently up to the worker pool size. ``on_progress(done, total)``
        is called after each item (for progress bars). ``options`` go to every item
        (see :meth:`synthesize_streaming`).
        """
        if speaker_ids is not None and len(speaker_ids) != len(texts):
            raise ValueError(f"speaker_ids has {len(speaker_ids)} entries for {len(texts)} texts")
        await self.initialize()
        ids = speaker_ids if speaker_ids is not None else [0] * len(texts)
        results: list[np.ndarray] = [np.zeros(0, np.int16)] * len(texts)
        errors: dict[int, Exception] = {}
        limit = asyncio.Semaphore(self.workers)
        done = 0

        async def one(index: int) -> None:
            nonlocal done
            async with limit:
                try:
                    results[index] = await self.synthesize(
                        texts[index], ids[index], speed, pitch, **options
                    )
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


def _respan(piece: AudioPiece, mapping: list[int], default_end: int) -> AudioPiece:
    """Map a piece's span from its segment to the whole text (segment span if none)."""
    if piece.text_span is None:
        span = (mapping[0], mapping[-1] + 1) if mapping else None
    else:
        span = map_span(piece.text_span, mapping, default_end)
    return AudioPiece(piece.audio, span, piece.waiting_for_text)


def _clean_piece(piece: str) -> str:
    """Streamed pieces keep their spaces (they join words); only control chars go."""
    return "".join(
        " " if (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\u200d") else ch
        for ch in unicodedata.normalize("NFC", piece)
    )


def _pool_width(backend: SpeechBackend) -> int:
    """Worker threads: up to 4 (CPU-bound backends), at least what a batching backend serves."""
    workers = max(1, min(4, os.cpu_count() or 2))
    return max(workers, backend.concurrent_streams() or 0)


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
