"""VibeVoice-1.5B (transformers' own model) behind :class:`SpeechBackend`: voices from audio.

The model reads a reference clip in its prompt, so any voice can be added at run time
(:meth:`add_voice`) or from the voices directory (:class:`~..voices.VoiceDirectory`),
besides :data:`UNPROMPTED`, the model speaking without a reference (a different voice
each utterance). It reads the whole text of an utterance in its prompt, so the engine
gives it a sentence at a time (``supports_text_stream`` is False); audio streams one
latent (133 ms) at a time (:mod:`pipecat_vibevoice.models.vibevoice_1p5b.streaming`).

Construction is cheap and fails fast (:class:`BackendUnavailable`): the packages, and a
transformers-format checkpoint directory (or a hub id already in the local HF cache).
What is kept of a clip is its encoder latents (:class:`~...models.vibevoice_1p5b.voice.VoicePrompt`);
the waveform is dropped once encoded. Nothing is written to disk here.

Word times are estimates: the model does not say which text a latent speaks, so words
are placed at a nominal reading rate (:data:`CHARS_PER_SECOND`) and any the model has
not reached when it ends are marked at the end of the audio.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from loguru import logger

from ..config import TTSConfig
from ..controls import VIBEVOICE_CONTROLS
from ..errors import UnknownVoiceError, VoiceError
from ..voices import VoiceDirectory, prepare_clip
from ..word_timing import word_starts
from .base import AudioPiece, BackendUnavailable, SpeechBackend, SynthesisRequest, pick_torch_device

REQUIRED_PACKAGES = ("torch", "transformers", "diffusers", "safetensors", "tokenizers")
#: The voice without a reference clip (the model picks one, anew for each utterance).
UNPROMPTED = "unprompted"
#: Nominal reading rate for word times (English read speech is about 14-16 characters/s).
CHARS_PER_SECOND = 14.0
#: Latents allowed per character of text (about twice a slow reader) plus a floor, so a
#: model that never says "end" stops.
LATENTS_PER_CHAR, MIN_LATENTS = 1.5, 30


class VibeVoice15BBackend(SpeechBackend):
    """VibeVoice-1.5B on transformers' ``VibeVoiceForConditionalGeneration``, voices from clips."""

    name = "vibevoice-1.5b"
    diffusion_controls = VIBEVOICE_CONTROLS
    sample_rate = 24000
    native_speed = False
    supports_text_stream = False

    def __init__(self, config: TTSConfig) -> None:
        missing = [p for p in REQUIRED_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise BackendUnavailable(
                f"VibeVoice-1.5B needs {', '.join(missing)} (pip install 'pipecat-vibevoice[vibevoice]')"
            )
        import transformers

        if not hasattr(transformers, "VibeVoiceForConditionalGeneration"):
            raise BackendUnavailable(
                f"VibeVoice-1.5B needs transformers >= 5.24 (found {transformers.__version__})"
            )
        from ...models.vibevoice_1p5b.checkpoint import CheckpointNotFoundError, resolve

        self.config = config
        try:
            self.model_dir = resolve(config.model_path, config.allow_download, config.cache_dir)
        except CheckpointNotFoundError as exc:
            raise BackendUnavailable(str(exc)) from exc
        self.directory = VoiceDirectory(config.voices_dir) if config.voices_dir else None
        self.device = "cpu"
        self.dtype: Any = None
        self._checkpoint: Any = None
        self._voices: dict[str, Any] = {}  # name -> VoicePrompt, in listing order
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        import torch

        from ...models.vibevoice_1p5b.checkpoint import load

        self.device = pick_torch_device(self.config)
        if self.config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, self.config.dtype)
        if self.device == "cuda":
            torch.cuda.set_per_process_memory_fraction(self.config.gpu_memory_fraction)
        elif self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self._checkpoint = load(self.model_dir, self.device, self.dtype)
        self.sample_rate = self._checkpoint.sample_rate
        if self.directory is not None:
            self._load_directory(self.directory)
        logger.info(
            f"VibeVoice-1.5B ready on {self.device} ({self.dtype}) from {self.model_dir}, "
            f"{len(self._voices)} voices from clips"
        )

    def _load_directory(self, directory: VoiceDirectory) -> None:
        """Encode every voice of the folder; a bad clip is skipped with a warning."""
        for entry in directory.entries():
            try:
                audio, rate = directory.read(entry)
                self.add_voice(entry.name, prepare_clip(audio, rate, self.clip_rate))
            except VoiceError as exc:
                logger.warning(f"voice {entry.name!r} from {entry.file} skipped: {exc}")

    def unload(self) -> None:
        self._checkpoint = None
        with self._lock:
            self._voices.clear()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def checkpoint(self) -> Any:
        """Model and processor (:class:`~...models.vibevoice_1p5b.checkpoint.LoadedCheckpoint`)."""
        if self._checkpoint is None:
            raise BackendUnavailable("VibeVoice-1.5B backend used before load()")
        return self._checkpoint

    # -- voices -------------------------------------------------------------------------

    @property
    def clip_rate(self) -> int:
        """The rate reference clips are encoded at (the processor's, 24 kHz)."""
        return self.checkpoint.sample_rate

    def voices(self) -> list[str]:
        with self._lock:
            return [*self._voices, UNPROMPTED]

    def add_voice(self, name: str, clip: np.ndarray) -> None:
        """Encode ``clip`` (float32 mono at :attr:`clip_rate`) as voice ``name`` (blocking).

        Only the encoder's latents are kept, in memory; the clip itself is not stored.
        A voice of the same name (case-insensitive) is replaced.
        """
        from ...models.vibevoice_1p5b.voice import encode_voice

        if name.lower() == UNPROMPTED:
            raise VoiceError(f"{UNPROMPTED!r} is the voice without a reference; pick another name")
        started = time.perf_counter()
        ckpt = self.checkpoint
        prompt = encode_voice(ckpt.model, ckpt.processor, clip)
        with self._lock:
            for old in [k for k in self._voices if k.lower() == name.lower()]:
                del self._voices[old]
            self._voices[name] = prompt
        logger.info(
            f"VibeVoice-1.5B voice {name!r}: {prompt.seconds:.1f} s clip, {prompt.tokens} "
            f"tokens, encoded in {time.perf_counter() - started:.2f}s"
        )

    def remove_voice(self, name: str) -> None:
        with self._lock:
            for key in self._voices:
                if key.lower() == name.lower():
                    del self._voices[key]
                    return
        raise UnknownVoiceError(f"no voice {name!r} made from a clip")

    def _voice(self, name: str) -> Any:
        if name == UNPROMPTED:
            return None
        with self._lock:
            prompt = self._voices.get(name)
        if prompt is None:
            raise UnknownVoiceError(f"unknown VibeVoice-1.5B voice {name!r}")
        return prompt

    # -- facts --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        info = {
            **super().describe(),
            "native_sample_rate": self.sample_rate,
            "model": "VibeVoice-1.5B",
            "model_path": str(self.model_dir),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "cfg_scale": self.config.cfg_scale,
            "inference_steps": self.config.inference_steps,
            "streaming_text_input": False,
            "voices_from_audio": True,
            "voices_dir": str(self.directory.path) if self.directory else None,
        }
        if self._checkpoint is not None:
            info["parameters"] = sum(p.numel() for p in self._checkpoint.model.parameters())
        return info

    def warmup(self) -> None:
        """Two latents of "Hello." in the default voice: every kernel once."""
        request = SynthesisRequest(
            text="Hello.", voice=self.voices()[0], options={"max_latents": 2}
        )
        for _ in self.stream(request):
            pass

    # -- synthesis ----------------------------------------------------------------------

    def settings_for(self, text: str, options: dict[str, Any]) -> Any:
        """Per-utterance settings; the engine has checked the controls (``engine.controls``)."""
        from ...models.vibevoice_1p5b.streaming import SpeechSettings

        cap = options.get("max_latents")
        return SpeechSettings(
            cfg_scale=options.get("cfg_scale", self.config.cfg_scale),
            inference_steps=options.get("inference_steps", self.config.inference_steps),
            max_latents=int(cap)
            if cap is not None
            else int(MIN_LATENTS + LATENTS_PER_CHAR * len(text)),
            sample_voice=bool(options.get("sample_voice", True)),
        )

    def stream(self, request: SynthesisRequest) -> Iterator[AudioPiece]:
        from ...models.vibevoice_1p5b.prompt import prompt_embeddings, prompt_ids
        from ...models.vibevoice_1p5b.streaming import stream_speech
        from ...models.vibevoice_1p5b.voice import voice_embeddings
        from ...models.vibevoice_realtime.noise import TorchNoise

        ckpt = self.checkpoint
        model = ckpt.model
        text = request.text
        voice = self._voice(request.voice)
        settings = self.settings_for(text, request.options)
        noise = TorchNoise(request.options.get("seed"))
        ids = prompt_ids(ckpt.processor, text, voice, ckpt.hop_length)
        rows = None
        if voice is not None:
            rows = voice_embeddings(model, voice, noise, sample=settings.sample_voice)
        embeds = prompt_embeddings(model, ids, rows)
        words = RateWords(
            text, ckpt.hop_length / ckpt.sample_rate * CHARS_PER_SECOND, ckpt.hop_length
        )
        latents = stream_speech(model, embeds, settings, noise, request.stop)
        finished = False
        made = 0
        try:
            for audio in latents:
                made += 1
                span, marks = words.latent()
                yield AudioPiece(audio.float().cpu().numpy(), text_span=span, words=marks)
                if request.stop.is_set():
                    return
            finished = not request.stop.is_set()
        finally:
            latents.close()
        if finished and made >= settings.max_latents and "max_latents" not in request.options:
            logger.warning(
                f"VibeVoice-1.5B stopped at its cap of {settings.max_latents} latents before "
                f"the model ended the utterance ({len(text)} characters): the speech may be cut"
            )
        rest = words.rest() if finished else ()
        if rest:
            yield AudioPiece(np.zeros(0, np.float32), text_span=(len(text), len(text)), words=rest)


class RateWords:
    """Word marks and text spans at a nominal reading rate, latent by latent.

    Latent ``k`` is taken to speak characters ``[k*c, (k+1)*c)`` with ``c`` characters a
    latent; a word starting there is marked at its share of the latent's samples.
    """

    def __init__(self, text: str, chars_per_latent: float, samples: int) -> None:
        self.text = text
        self.per_latent = chars_per_latent
        self.samples = samples
        self.starts = list(word_starts(text))
        self.index = 0
        self.next_word = 0

    def latent(self) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]]:
        """Span and word marks of the next latent."""
        low, high = self.index * self.per_latent, (self.index + 1) * self.per_latent
        self.index += 1
        marks = []
        while self.next_word < len(self.starts) and self.starts[self.next_word] < high:
            pos = self.starts[self.next_word]
            offset = int(max(0.0, pos - low) / self.per_latent * self.samples)
            marks.append((pos, min(offset, self.samples - 1)))
            self.next_word += 1
        end = len(self.text)
        return (min(int(low), end), min(int(high), end)), tuple(marks)

    def rest(self) -> tuple[tuple[int, int], ...]:
        """Words not reached when the model ended: they start by the end of its audio."""
        rest = tuple((pos, 0) for pos in self.starts[self.next_word :])
        self.next_word = len(self.starts)
        return rest


def make_backend(config: TTSConfig) -> SpeechBackend:
    """The backend for ``engine="vibevoice-1.5b"`` (raises :class:`BackendUnavailable`)."""
    return VibeVoice15BBackend(config)


__all__ = ["UNPROMPTED", "RateWords", "VibeVoice15BBackend", "make_backend"]
