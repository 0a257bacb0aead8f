"""The async TTS engine: one voice model behind a streaming, cancellable API.

The engine owns the event-loop side of synthesis; backends own the model side. A
request flows as: control and text checks → the request's text is turned into backend
pieces (:mod:`.sources`: sentence segments of a string, or a :class:`GrowingText` as it
grows) → each piece pulled by one worker-thread call (:mod:`.workers`) → speed, pitch,
resampling and fixed-size PCM16 chunks with their text (:class:`.chunks.ChunkAssembler`).
Closing the async generator (consumer gone, task cancelled) sets the request's stop
event before the next model call, so no model work outlives its consumer by more than
one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np
from loguru import logger

from .backends.base import SpeechBackend, SynthesisRequest
from .chunks import ChunkAssembler, SpeechChunk
from .config import TTSConfig
from .controls import CONTROLS, PITCH, SPEED
from .errors import (
    BackendLoadError,
    EmptyTextError,
    EngineNotReadyError,
    TextError,
    UnknownVoiceError,
    VoiceCloningUnsupportedError,
    VoiceError,
    VoiceNameError,
)
from .growing_text import GrowingText
from .loading import BackendFactory, load_backend
from .sources import growing_from, text_pieces
from .text import validate_text
from .voices import ClonesVoices, VoiceDirectory, check_voice_name, prepare_clip
from .workers import ModelWorkers

#: What ``synthesize_streaming`` and ``stream_chunks`` take as text.
Text = str | GrowingText | AsyncIterable[str]


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
        self, config: TTSConfig | None = None, backend_factory: BackendFactory | None = None
    ) -> None:
        self.config = config or TTSConfig.from_env()
        self._backend_factory = backend_factory
        self._backend: SpeechBackend | None = None
        self._workers: ModelWorkers | None = None
        self._init_lock = threading.Lock()
        self._fallback_reason: str | None = None
        self._load_errors: list[str] = []
        self._active = 0
        self._cut_short = False  # a stream ended early since the model was last idle
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
            try:
                loaded = load_backend(self.config, self._backend_factory)
            except BackendLoadError as exc:
                self._load_errors = exc.errors
                raise
            backend = loaded.backend
            self._fallback_reason, self._load_errors = loaded.fallback_reason, loaded.errors
            try:
                backend.warmup()
            except Exception as exc:  # a failing warm-up is logged, real requests will tell
                logger.warning(f"TTS warm-up of {backend.name} failed: {exc}")
            self._workers = ModelWorkers(backend)
            self._backend = backend
            logger.info(
                f"TTS engine ready: {backend.name} ({', '.join(backend.voices()[:5])}) "
                f"in {time.perf_counter() - started:.2f}s, output {self.config.sample_rate} Hz"
            )

    @property
    def executor(self) -> Executor | None:
        """The pool model calls run on (None before ``initialize()``)."""
        return self._workers.executor if self._workers is not None else None

    @property
    def workers(self) -> int:
        """Model calls that run at once: the width of the engine's worker pool."""
        return self._workers.width if self._workers is not None else 1

    def replace_executor(self, executor: Executor) -> Executor:
        """Run model calls on ``executor`` from now on; returns the previous pool.

        For servers that order model work themselves (the serving API's deadline
        scheduler). The caller shuts the old pool down. Requires an initialised engine.
        """
        if self._workers is None:
            raise EngineNotReadyError("initialise the engine before replacing its pool")
        return self._workers.replace_executor(executor)

    async def cleanup(self) -> None:
        """Free the model (and the CUDA cache). The engine can be initialised again."""
        backend, self._backend = self._backend, None
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown()
        if backend is not None:
            await asyncio.to_thread(backend.unload)
            logger.info(f"TTS engine {backend.name} cleaned up")
        gc.collect()
        _empty_cuda_cache()

    # -- voices -------------------------------------------------------------------------

    async def get_available_speakers(self) -> list[str]:
        """Voice names, default first; ``speaker_id`` accepts a name or an index into this."""
        return list(self.backend.voices())

    async def add_voice(
        self,
        name: str,
        audio: np.ndarray,
        sample_rate: int,
        *,
        description: str | None = None,
        consent: str | None = None,
        persist: bool = False,
        replace: bool = False,
    ) -> str:
        """Make a voice from a reference clip; returns its name (usable as ``speaker_id``).

        ``audio`` is mono (or a few channels, averaged) int16 or float samples at
        ``sample_rate`` (8-192 kHz, resampled to the model's rate), 2-60 s of speech; a
        clip too short, too long, silent or at an impossible rate raises a
        :class:`~.errors.VoiceClipError` subclass that says which. Only the backend's
        encoding of the clip is kept, in memory, until :meth:`remove_voice` or
        :meth:`cleanup`; the clip itself is not kept and nothing is written to disk —
        unless ``persist`` is set, which writes the resampled clip as ``<name>.wav`` and
        its ``description`` and ``consent`` note into ``config.voices_dir/voices.json`` so
        the voice comes back after a restart. Only backends that read reference audio
        take voices (VibeVoice-1.5B); others raise :class:`VoiceCloningUnsupportedError`.
        Clone a voice only with its speaker's consent (docs/vibevoice-1.5b.md).
        """
        await self.initialize()
        backend = self.backend
        if not isinstance(backend, ClonesVoices):
            raise VoiceCloningUnsupportedError(
                f"the {backend.name} engine cannot make voices from audio; "
                "use engine='vibevoice-1.5b'"
            )
        name = check_voice_name(name)
        if not replace and any(v.lower() == name.lower() for v in backend.voices()):
            raise VoiceNameError(f"voice {name!r} exists; pass replace=True to replace it")
        directory = None
        if persist:
            if not self.config.voices_dir:
                raise VoiceError("persist=True needs config.voices_dir (where voices are kept)")
            directory = VoiceDirectory(self.config.voices_dir)
        clip = await asyncio.to_thread(prepare_clip, audio, sample_rate, backend.clip_rate)
        await asyncio.to_thread(backend.add_voice, name, clip)
        if directory is not None:
            await asyncio.to_thread(
                directory.save, name, clip, backend.clip_rate, description, consent
            )
            logger.info(f"TTS voice {name!r} kept in {directory.path}")
        return name

    async def remove_voice(self, name: str, *, delete_file: bool = False) -> None:
        """Forget a voice made from a clip; ``delete_file`` also removes it from voices_dir."""
        backend = self.backend
        if not isinstance(backend, ClonesVoices):
            raise VoiceCloningUnsupportedError(
                f"the {backend.name} engine has no voices from audio"
            )
        await asyncio.to_thread(backend.remove_voice, name)
        if delete_file and self.config.voices_dir:
            await asyncio.to_thread(VoiceDirectory(self.config.voices_dir).remove, name)

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
        text: Text,
        speaker_id: int | str | None = 0,
        speed: float = 1.0,
        pitch: float = 1.0,
        **options: Any,
    ) -> AsyncIterator[bytes]:
        """Yield 16-bit little-endian mono PCM chunks at ``config.sample_rate``.

        ``text`` is a string, a :class:`GrowingText` that its producer appends to while it
        is spoken, or an async iterable of text pieces (e.g. LLM tokens). VibeVoice reads
        streamed text as it arrives (speech starts once its first 5-token window is
        there); other backends get each sentence as soon as it is complete. Every chunk
        but the last is exactly ``config.chunk_ms`` long (with streaming off, the whole
        utterance comes as one chunk). Raises ``ValueError`` subclasses for bad input
        before any audio; ``speed``/``pitch`` take 0.5..2.0 (``engine.controls``).
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
        text: Text,
        speaker_id: int | str | None = 0,
        speed: float = 1.0,
        pitch: float = 1.0,
        **options: Any,
    ) -> AsyncIterator[SpeechChunk]:
        """Like :meth:`synthesize_streaming`, with each chunk's time and text span.

        Spans index the cleaned text for a ``str`` and the growing text (the
        concatenated pieces) otherwise; see :class:`~.chunks.SpeechChunk`.
        """
        speed, pitch = SPEED.check(speed), PITCH.check(pitch)
        options = {
            k: CONTROLS[k].check(v) if k in CONTROLS and v is not None else v
            for k, v in options.items()
        }
        call = (speaker_id, speed, pitch, options)
        if isinstance(text, str):
            chunks = self._speak(validate_text(text, self.config.max_text_chars), None, *call)
        elif isinstance(text, GrowingText):
            chunks = self._speak("", text, *call)
        elif isinstance(text, AsyncIterable):
            chunks = self._speak_pieces(text, *call)
        else:
            raise TextError(
                "text must be a str, a GrowingText or an async iterable of str, "
                f"got {type(text).__name__}"
            )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _speak_pieces(
        self, pieces: AsyncIterable[str], *call: Any
    ) -> AsyncIterator[SpeechChunk]:
        """Speak an async iterable of pieces through a :class:`GrowingText` fed from it."""
        async with growing_from(pieces) as (growing, failure):
            async with contextlib.aclosing(self._speak("", growing, *call, failure)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _speak(
        self,
        whole: str,
        growing: GrowingText | None,
        speaker_id: int | str | None,
        speed: float,
        pitch: float,
        options: dict[str, Any],
        failure: list[BaseException] | None = None,
    ) -> AsyncIterator[SpeechChunk]:
        """One request: ``whole`` text, or ``growing`` text (``failure``: its producer's error)."""
        await self.initialize()
        backend, workers = self.backend, self._workers
        assert workers is not None
        voice = self.resolve_voice(speaker_id)
        request = SynthesisRequest(text=whole, voice=voice, speed=speed, options=options)
        spoken = (lambda: growing.text) if growing is not None else (lambda: whole)
        assembler = ChunkAssembler(self.config, backend, speed, pitch, spoken)
        source = text_pieces(workers, request, growing, self.config.max_text_chars)
        self._active += 1
        started, outcome = time.perf_counter(), "ok"
        try:
            async for piece in source:
                if failure:
                    raise failure[0]
                for chunk in assembler.add(piece):
                    yield chunk
            if failure:
                raise failure[0]
            for chunk in assembler.finish():
                yield chunk
            if growing is not None and not growing.text.strip():
                raise EmptyTextError("the text stream carried no speakable text")
            if assembler.samples_out == 0:
                logger.warning(f"TTS produced no audio for text {spoken()[:60]!r}")
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            request.stop.set()
            await source.aclose()
            self._stream_ended(backend, workers, outcome, voice, spoken(), assembler, started)

    def _stream_ended(
        self,
        backend: SpeechBackend,
        workers: ModelWorkers,
        outcome: str,
        voice: str,
        text: str,
        assembler: ChunkAssembler,
        started: float,
    ) -> None:
        """Statistics, the debug line, and memory given back once a cut stream leaves."""
        self._active -= 1
        self._cut_short = self._cut_short or outcome != "ok"
        if self._active == 0 and self._cut_short:
            # A stream stopped before its end keeps the model's scratch memory; with
            # nothing else running, give it back now (off the audio path).
            self._cut_short = False
            workers.run_soon(backend.release_idle_memory)
        audio_s = assembler.samples_out / self.config.sample_rate
        self._stats["utterances"] += 1
        self._stats["failures"] += outcome == "error"
        self._stats["audio_s"] += audio_s
        first = assembler.first_chunk_at
        ttfc = f"{(first - started) * 1000:.0f}ms" if first else "n/a"
        logger.debug(
            f"TTS {outcome}: voice={voice} chars={len(text)} audio={audio_s:.2f}s "
            f"first_chunk={ttfc} total={time.perf_counter() - started:.2f}s"
        )

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


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
