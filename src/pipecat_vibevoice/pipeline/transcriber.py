"""faster-whisper behind two worker threads, shared by every conversation.

One :class:`Transcriber` serves the whole process (the CTranslate2 model is
thread-safe and loaded with two workers). Final transcripts, which a conversation
waits on, never queue behind interim ones and are decoded in batches across
conversations; short utterances are decoded over an
encoder window sized to them rather than Whisper's fixed 30 s; and each result says
how sure the decoder was of its last word, which the end-of-turn rule reads.

The pure decoding helpers (:func:`looks_looped`, :func:`last_word_probability`,
:func:`token_probabilities`) sit beside the class so they can be tested without a
model.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger

#: Whisper's input sample rate (Hz): every audio array given to the transcriber.
WHISPER_RATE = 16000
#: Longest utterance decoded with a shortened encoder window (Whisper's window is 30 s).
MAX_WINDOW_SECS = 30
#: Shortest encoder window; more silence after the speech makes decoding loops rarer.
MIN_WINDOW_SECS = 8
#: Interim transcripts waiting for the interim worker beyond this many are shed (the
#: oldest first): under load a late partial transcript is worthless, and decoding it
#: takes CPU from the final transcripts and the voice that conversations wait for.
MAX_PENDING_INTERIM = 2
#: Finals needed in the window before their latency counts (see ``final_latency``).
MIN_LATENCY_SAMPLES = 3
#: Most final transcripts decoded in one batch (conversations ending their turns at once).
MAX_FINAL_BATCH = 8


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


# -- decoding helpers ---------------------------------------------------------------


def _restarts(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Normalised words, and (earlier start, restart) pairs of sentences that begin alike."""
    words = text.split()
    norm = [w.strip(".,!?;:").lower() for w in words]
    starts = [i for i in range(len(words)) if i == 0 or words[i - 1][-1:] in ".!?"]
    pairs = [
        (i, j)
        for a, i in enumerate(starts)
        for j in starts[a + 1 :]
        if j + 2 <= len(norm) and norm[i : i + 2] == norm[j : j + 2]
    ]
    return norm, pairs


def looks_looped(text: str) -> bool:
    """True when a sentence restarts a previous one ("Can you hear me? Can you hear").

    Such repeats are usually the decoder looping; a false alarm costs a full-window
    decode (:meth:`Transcriber._read_result`).
    """
    return bool(_restarts(text)[1])


def loop_start(text: str) -> int | None:
    """Where the text starts copying an earlier sentence word for word to its end, in
    words ("Please explain how a rainbow is formed. Please explain how a rainbow is" →
    7), or ``None``.

    That is the decoder looping over a short window's silence, and what comes before
    is the transcript; the copy may stop inside its last word. A sentence that only
    begins like an earlier one ("I want a pizza. I want it large.") is not a copy: it
    may be what the user said.
    """
    norm, pairs = _restarts(text)
    for i, j in pairs:
        copy, original = norm[j:], norm[i : i + len(norm) - j]
        # The copy may stop inside its last word ("rain" of "rainbow").
        if copy[:-1] == original[:-1] and original[-1].startswith(copy[-1]):
            return j
    return None


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


def token_probabilities(logits: Any, tokens: list[int]) -> list[float]:
    """Softmax probability of each chosen token, from CTranslate2's per-step logits.

    CTranslate2 returns raw logits, not probabilities; the log-sum-exp is taken in
    float64 around the row's maximum so that no step overflows.
    """
    probabilities = []
    for step, token in zip(logits, tokens, strict=False):
        row = np.asarray(step, dtype=np.float64).reshape(-1)
        top = row.max()
        log_norm = top + np.log(np.exp(row - top).sum())
        probabilities.append(float(np.exp(row[token] - log_norm)))
    return probabilities


def window_seconds(speech_secs: float) -> int:
    """Encoder window for an utterance: whole seconds plus one, within the bounds."""
    return min(MAX_WINDOW_SECS, max(MIN_WINDOW_SECS, int(np.ceil(speech_secs + 1.0))))


def plausible_token_count(speech_secs: float) -> int:
    """Most tokens a real utterance of this length decodes to.

    Nobody says more than ~6 tokens a second: a longer decode is a loop.
    """
    return int(8 + 6 * speech_secs)


# -- the transcriber ----------------------------------------------------------------


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
    Final transcripts that queue up together (several conversations ending their turns
    at once) are decoded in one batch, so the last of them does not wait for all the
    others one after another.
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
        # Per kind, a heap ordered by arrival: (sequence number, audio, caller's future,
        # time.monotonic() when it was queued).
        self._queues: dict[int, list[tuple[int, np.ndarray, Future, float]]] = {
            self.FINAL: [],
            self.INTERIM: [],
        }
        self._counter = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self.jobs = 0
        self.fallbacks = 0
        self.shed = 0
        self.batches = 0
        #: Decodes that repeated a sentence and were cut before the repeat.
        self.loops_cut = 0
        #: Whether the machine has room for optional work; interim transcripts are
        #: shed while it says no (the server's load monitor sets it; None: always).
        self.has_slack: Callable[[], bool] | None = None
        self._finals_running = 0
        #: Per kind: (seconds the last job waited in the queue, seconds it took to decode).
        self._final_latencies: deque[tuple[float, float]] = deque()  # (finished, latency)
        self.last_job: dict[int, tuple[float, float]] = {
            self.FINAL: (0.0, 0.0),
            self.INTERIM: (0.0, 0.0),
        }
        self._threads = [
            threading.Thread(
                target=self._worker_loop, args=(kind,), name=f"stt-{kind}", daemon=True
            )
            for kind in (self.FINAL, self.INTERIM)
        ]
        for thread in self._threads:
            thread.start()

    async def transcribe(self, audio: np.ndarray, priority: int = FINAL) -> Transcript:
        """What ``audio`` (float32, 16 kHz mono) says; runs off the event loop.

        ``priority`` is :attr:`FINAL` or :attr:`INTERIM` (anything else counts as
        interim).
        """
        future: Future = Future()
        kind = self.FINAL if priority == self.FINAL else self.INTERIM
        if kind == self.INTERIM and self.has_slack is not None and not self.has_slack():
            # A busy box: partial text is a nicety, the cores belong to the audio and
            # to the final transcripts conversations wait for.
            self.shed += 1
            return Transcript("")
        with self._cv:
            if self._closed:
                raise RuntimeError("transcriber is closed")
            queue = self._queues[kind]
            heapq.heappush(queue, (next(self._counter), audio, future, time.monotonic()))
            while kind == self.INTERIM and len(queue) > MAX_PENDING_INTERIM:
                _, _, stale, _ = heapq.heappop(queue)
                if stale.set_running_or_notify_cancel():
                    stale.set_result(Transcript(""))  # the caller shows nothing new
                self.shed += 1
            self._cv.notify_all()
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop the workers; pending requests are cancelled."""
        with self._cv:
            self._closed = True
            pending = [item for q in self._queues.values() for item in q]
            for q in self._queues.values():
                q.clear()
            self._cv.notify_all()
        for _, _, future, _ in pending:
            future.cancel()

    def final_latency(self, window_secs: float = 10.0) -> float:
        """How long a final transcript takes now: queue wait plus decoding, in seconds.

        The median of the finals finished in the last ``window_secs`` (at least three,
        else none count), or the wait of the oldest one still queued if that is longer.
        A conversation waits for its final transcript before it is answered, so this is
        how far behind speech recognition runs: a load signal that predicts the answers'
        delay. The median, so that one slow decode (a full-window redo after a loop)
        does not read as overload.
        """
        now = time.monotonic()
        with self._cv:
            queue = self._queues[self.FINAL]
            waiting = now - min(item[3] for item in queue) if queue else 0.0
            while self._final_latencies and self._final_latencies[0][0] < now - window_secs:
                self._final_latencies.popleft()
            recent = [latency for _, latency in self._final_latencies]
        done = float(np.median(recent)) if len(recent) >= MIN_LATENCY_SAMPLES else 0.0
        return max(waiting, done)

    # -- worker threads ---------------------------------------------------------------

    def _must_wait(self, kind: int) -> bool:
        """Whether the worker of ``kind`` must wait (caller holds the lock)."""
        if not self._queues[kind]:
            return True
        return kind == self.INTERIM and bool(self._queues[self.FINAL] or self._finals_running)

    def _take_jobs(self, kind: int) -> list[tuple[np.ndarray, Future, float]]:
        """The next jobs of ``kind`` (caller holds the lock): every queued final, up to
        :data:`MAX_FINAL_BATCH`, decoded together; interim ones one at a time."""
        queue = self._queues[kind]
        count = min(len(queue), MAX_FINAL_BATCH) if kind == self.FINAL else 1
        return [heapq.heappop(queue)[1:] for _ in range(count)]

    def _worker_loop(self, kind: int) -> None:
        """Take requests of ``kind`` until the transcriber is closed."""
        # Not niced: this Python thread takes the GIL, and a descheduled low-priority
        # GIL holder stalls the event loop (priority inversion). Only CTranslate2's own
        # compute threads, which run without the GIL, are lowered (at load).
        while True:
            with self._cv:
                while self._must_wait(kind) and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                jobs = self._take_jobs(kind)
                if kind == self.FINAL:
                    self._finals_running += 1
            try:
                self._run_jobs(kind, jobs)
            finally:
                if kind == self.FINAL:
                    with self._cv:
                        self._finals_running -= 1
                        self._cv.notify_all()

    def _run_jobs(self, kind: int, jobs: list[tuple[np.ndarray, Future, float]]) -> None:
        """Decode the jobs whose callers still wait, in one batch, and hand out results."""
        live = [
            (audio, future, queued)
            for audio, future, queued in jobs
            if future.set_running_or_notify_cancel()
        ]
        if not live:
            return
        started = time.monotonic()
        error: Exception | None = None
        try:
            results = self._transcribe_blocking([a for a, _, _ in live])
        except Exception as exc:
            error = exc
        # Bookkeeping before the results go out: a caller that wakes on its result and
        # asks for the latency must see its own job in it (and the batch count).
        took = time.monotonic() - started
        waited = started - min(queued for _, _, queued in live)
        self.last_job[kind] = (waited, took)
        if kind == self.FINAL:
            finished = time.monotonic()
            with self._cv:  # each job's own latency: its wait plus the batch's decode
                self._final_latencies.extend(
                    (finished, started - queued + took) for _, _, queued in live
                )
        self.batches += 1
        logger.trace(
            f"stt {'final' if kind == self.FINAL else 'interim'}: {len(live)} job(s), "
            f"oldest waited {waited:.3f}s, decoded in {took:.3f}s"
        )
        for index, (_, future, _) in enumerate(live):
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(results[index])

    # -- decoding (on a worker thread) ------------------------------------------------

    def _transcribe_blocking(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Decode utterances together: those that share an encoder window in one batch.

        Batching helps the decoder (measured on 2 cores, whisper tiny.en int8: 69 ms
        of CPU per utterance alone, ~40 ms in batches of 4-8); the encoder costs the
        same per utterance either way, so utterances are grouped by their window and
        never padded to a longer one. An utterance too long for a shortened window
        takes Whisper's full one.
        """
        self.jobs += len(audios)
        results: list[Transcript | None] = [None] * len(audios)
        groups: dict[int, list[int]] = {}
        for i, audio in enumerate(audios):
            if len(audio) > (MAX_WINDOW_SECS - 1) * WHISPER_RATE:
                results[i] = self._transcribe_full(audio)
            else:
                groups.setdefault(window_seconds(len(audio) / WHISPER_RATE), []).append(i)
        for seconds, members in groups.items():
            decoded = self._transcribe_windows([audios[i] for i in members], seconds)
            for i, transcript in zip(members, decoded, strict=True):
                results[i] = transcript
        return [r if r is not None else Transcript("") for r in results]

    def _encode_windows(self, audios: list[np.ndarray], seconds: int) -> Any:
        """Encoder output for each of ``audios`` padded with silence to ``seconds``.

        faster-whisper always encodes Whisper's full 30 s window, mostly padding. The
        CTranslate2 encoder accepts shorter inputs, so each utterance is padded *with
        silence in the audio domain* (so the log-mel features are exactly Whisper's)
        and only that is encoded.
        """
        import ctranslate2

        model = self.model
        features = []
        for audio in audios:
            padded = np.zeros(seconds * WHISPER_RATE, dtype=np.float32)
            padded[: len(audio)] = audio[: len(padded)]
            features.append(model.feature_extractor(padded, padding=0)[:, : seconds * 100])
        return model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(features))),
            to_cpu=False,
        )

    def _transcribe_windows(self, audios: list[np.ndarray], seconds: int) -> list[Transcript]:
        """Greedy decode of utterances over an encoder window of ``seconds``.

        Whole seconds plus one (see :func:`window_seconds`): ~4x less CPU than the full
        window for a 3 s utterance, with the same text on our test phrases. A decode
        that runs away or loops is redone over the full window. In a batch the decoder
        may run up to the longest utterance's token limit; each result is judged
        against its own, as if it had been decoded alone.
        """
        limits = [plausible_token_count(len(a) / WHISPER_RATE) for a in audios]
        encoded = self._encode_windows(audios, seconds)
        decoded = self.model.model.generate(
            encoded,
            [self._prompt] * len(audios),
            beam_size=1,
            max_length=len(self._prompt) + max(limits),
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_logits_vocab=True,
            return_no_speech_prob=True,
        )
        return [
            self._read_result(result, audio, limit)
            for result, audio, limit in zip(decoded, audios, limits, strict=True)
        ]

    def _read_result(self, result: Any, audio: np.ndarray, token_limit: int) -> Transcript:
        """Text and last-word confidence of one decode, or the full-window redo."""
        ids = result.sequences_ids[0]
        probabilities = token_probabilities(result.logits[0], ids)
        kept = [(t, p) for t, p in zip(ids, probabilities, strict=False) if t < self._tokenizer.eot]
        tokens = [t for t, _ in kept]
        text = self._tokenizer.decode(tokens).strip()
        restart = loop_start(text)
        if restart is not None and len(tokens) < token_limit - 1:
            # A sentence copied word for word, then the end of text: keep what came
            # before the copy (the words a full-window redo gives, ~0.5 s of CPU
            # sooner; that redo held every queued final transcript behind it).
            kept = self._tokens_for_words(kept, restart)
            tokens = [t for t, _ in kept]
            text = self._tokenizer.decode(tokens).strip()
            self.loops_cut += 1
            logger.debug(f"windowed decode repeated itself; kept {text!r}")
        elif len(tokens) >= token_limit - 1 or looks_looped(text):
            # No end of text within a plausible length: the short window made the
            # decoder loop. Redo it the standard way (full 30 s window).
            self.fallbacks += 1
            logger.info(
                f"windowed decode ran away ({len(tokens)} tokens, limit {token_limit}, "
                f"{len(audio) / WHISPER_RATE:.2f} s of audio); full window"
            )
            return self._transcribe_full(audio)
        # Whisper's own silence rule: likely no speech and a low-confidence decode.
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            return Transcript("")
        tail = last_word_probability(
            [self._tokenizer.decode([t]) for t in tokens], [p for _, p in kept]
        )
        return Transcript(text, tail)

    def _tokens_for_words(
        self, kept: list[tuple[int, float]], words: int
    ) -> list[tuple[int, float]]:
        """The shortest prefix of ``kept`` (token, probability) that decodes to ``words`` words."""
        for end in range(1, len(kept) + 1):
            if len(self._tokenizer.decode([t for t, _ in kept[:end]]).split()) > words:
                return kept[: end - 1]
        return kept

    def _transcribe_full(self, audio: np.ndarray) -> Transcript:
        """faster-whisper's standard decode over the full 30 s window."""
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
