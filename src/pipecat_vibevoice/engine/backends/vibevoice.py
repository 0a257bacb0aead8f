"""VibeVoice-Realtime behind the engine's :class:`SpeechBackend` interface.

Construction is cheap and fails fast: it only checks that the packages are importable
and that the weights are on this machine (a directory, or a hub id already in the HF
cache), raising :class:`BackendUnavailable` otherwise — which is what lets
``engine="auto"`` fall back to the bundled voice without waiting for a model load.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from ...models.vibevoice_realtime.checkpoint import CheckpointNotFoundError, resolve_model_dir
from ..config import TTSConfig
from ..controls import VIBEVOICE_CONTROLS
from ..word_timing import WindowWords
from .base import AudioPiece, BackendUnavailable, SpeechBackend, SynthesisRequest, pick_torch_device

REQUIRED_PACKAGES = ("torch", "transformers", "diffusers", "safetensors", "tokenizers")
#: The official default voice, listed first when present.
OFFICIAL_DEFAULT_VOICE = "en-Carter_man"
#: The tokenizer the official processor loads (``language_model_pretrained_name``).
DEFAULT_TOKENIZER_REPO = "Qwen/Qwen2.5-0.5B"
SOLVERS = ("sde-dpmsolver++", "dpmsolver++")
#: One-to-one character replacements (offsets stay valid): typographic quotes and
#: dashes the official demo also straightens before tokenising.
_CHAR_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def load_tokenizer(model_dir: Path, allow_download: bool = False, cache_dir: str | None = None):
    """The Qwen2.5 tokenizer (``tokenizers.Tokenizer``) from ``tokenizer.json``.

    Looked for in the model directory (where the docs say to put it), then in the local
    HF cache of ``Qwen/Qwen2.5-0.5B``; downloaded only with ``allow_download``.
    """
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    try:
        from huggingface_hub import hf_hub_download

        cached = hf_hub_download(
            DEFAULT_TOKENIZER_REPO,
            "tokenizer.json",
            cache_dir=cache_dir,
            local_files_only=not allow_download,
        )
        return Tokenizer.from_file(cached)
    except Exception:
        pass
    raise BackendUnavailable(
        f"VibeVoice tokenizer file 'tokenizer.json' is missing from {model_dir}: "
        f"copy the Qwen2.5 tokenizer ({DEFAULT_TOKENIZER_REPO}: tokenizer.json) there"
    )


class VibeVoiceBackend(SpeechBackend):
    """Streaming VibeVoice-Realtime-0.5B on our own loop (see :mod:`.generation`)."""

    name = "vibevoice"
    diffusion_controls = VIBEVOICE_CONTROLS
    sample_rate = 24000
    native_speed = False
    supports_text_stream = True

    def __init__(self, config: TTSConfig) -> None:
        missing = [p for p in REQUIRED_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise BackendUnavailable(
                f"VibeVoice needs {', '.join(missing)} (pip install 'pipecat-vibevoice[vibevoice]')"
            )
        self.config = config
        try:
            self.model_dir = resolve_model_dir(
                config.model_path, config.allow_download, config.cache_dir
            )
        except CheckpointNotFoundError as exc:
            raise BackendUnavailable(str(exc)) from exc
        self.voice_dirs = [self.model_dir]
        if config.voices_dir:
            self.voice_dirs.insert(0, Path(config.voices_dir).expanduser())
        self.device = "cpu"
        self.dtype: Any = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._preset_paths: dict[str, Path] = {}
        self._presets: dict[str, Any] = {}
        self._preset_lock = threading.Lock()
        self._batcher: Any = None  # VibeVoiceBatcher when config.max_batch > 1

    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        import torch

        from ...models.vibevoice_realtime.checkpoint import load_model
        from ...models.vibevoice_realtime.presets import find_presets

        self._preset_paths = find_presets(self.voice_dirs)
        if not self._preset_paths:
            raise BackendUnavailable(
                "no VibeVoice voice presets (*.pt) found in "
                + ", ".join(str(d) for d in self.voice_dirs)
                + " (set voices_dir to the official demo/voices/streaming_model folder)"
            )
        self._tokenizer = load_tokenizer(
            self.model_dir, self.config.allow_download, self.config.cache_dir
        )
        self.device = pick_torch_device(self.config)
        if self.config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, self.config.dtype)
        if self.device == "cuda":
            torch.cuda.set_per_process_memory_fraction(self.config.gpu_memory_fraction)
        elif self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self._model = load_model(self.model_dir, self.device, self.dtype)
        self._preset(self.voices()[0])  # load and check the default voice now
        if self.config.max_batch > 1:
            from ...models.vibevoice_realtime.batcher import VibeVoiceBatcher

            self._batcher = VibeVoiceBatcher(self._model, self.config.max_batch)
        logger.info(
            f"VibeVoice ready on {self.device} ({self.dtype}), "
            f"{len(self._preset_paths)} voices from {', '.join(map(str, self.voice_dirs))}, "
            f"batching up to {self.config.max_batch} utterances per step"
        )

    def unload(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        self._model = None
        self._presets.clear()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def model(self) -> Any:
        """The loaded :class:`VibeVoiceRealtimeModel`."""
        if self._model is None:
            raise BackendUnavailable("VibeVoice backend used before load()")
        return self._model

    def voices(self) -> list[str]:
        names = list(self._preset_paths)
        if OFFICIAL_DEFAULT_VOICE in names:
            names.remove(OFFICIAL_DEFAULT_VOICE)
            names.insert(0, OFFICIAL_DEFAULT_VOICE)
        return names

    def describe(self) -> dict[str, Any]:
        info = {
            **super().describe(),
            "model": "VibeVoice-Realtime-0.5B",
            "model_path": str(self.model_dir),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "cfg_scale": self.config.cfg_scale,
            "inference_steps": self.config.inference_steps,
            "streaming_text_input": True,
            "max_batch": self.config.max_batch,
            "batch_size": 0,
        }
        if self._batcher is not None:
            batch = self._batcher.describe()
            info.update(batch_size=batch["batch_size"], batch_active=batch["active_utterances"])
        if self._model is not None:
            info["parameters"] = sum(p.numel() for p in self._model.parameters())
        return info

    def concurrent_streams(self) -> int | None:
        """``max_batch`` when batching: each running stream holds a worker between steps."""
        return self._batcher.max_batch if self._batcher is not None else None

    def warmup(self) -> None:
        """Two latents of "Hello." — enough to touch every kernel once."""
        request = SynthesisRequest(
            text="Hello.", voice=self.voices()[0], options={"max_latents": 2}
        )
        for _ in self.stream(request):
            pass

    # -- synthesis ----------------------------------------------------------------------

    def _preset(self, voice: str) -> Any:
        from ...models.vibevoice_realtime.presets import load_preset

        with self._preset_lock:
            preset = self._presets.get(voice)
            if preset is None:
                path = self._preset_paths.get(voice)
                if path is None:
                    raise ValueError(f"unknown VibeVoice voice {voice!r}")
                model = self.model
                preset = load_preset(path).to(model.device, model.dtype)
                cfg = model.config
                preset.check_against(
                    cfg.num_lower_layers, cfg.tts_backbone_num_hidden_layers, cfg.hidden_size
                )
                self._presets[voice] = preset
            return preset

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets (no special tokens, as the official processor)."""
        encoding = self._tokenizer.encode(text.translate(_CHAR_MAP), add_special_tokens=False)
        return list(encoding.ids), [tuple(o) for o in encoding.offsets]

    def settings_for(self, options: dict[str, Any]) -> Any:
        """Generation settings from per-call options, defaults from the config.

        The engine has already checked every control in ``options`` (``engine.controls``).
        """
        from ...models.vibevoice_realtime.generation import GenerationSettings

        solver = options.get("solver", SOLVERS[0])
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        max_latents = options.get("max_latents")
        return GenerationSettings(
            cfg_scale=options.get("cfg_scale", self.config.cfg_scale),
            inference_steps=options.get("inference_steps", self.config.inference_steps),
            algorithm=solver,
            max_latents=None if max_latents is None else int(max_latents),
        )

    def stream(self, request: SynthesisRequest) -> Iterator[AudioPiece]:
        from ...models.vibevoice_realtime.generation import (
            SPEECH_WINDOW,
            WAITING,
            TextTokenStream,
            TorchNoise,
            generate,
        )

        settings = self.settings_for(request.options)
        model = self.model
        preset = self._preset(request.voice)
        if request.growing_text is not None:
            tokens = TextTokenStream(self.encode, request.growing_text.snapshot)
        else:
            tokens = TextTokenStream.whole(self.encode, request.text)
        noise = TorchNoise(request.options.get("seed"), device=model.device)
        if self._batcher is not None:
            # Same items as generate(), stepped together with the other streams.
            items = self._batcher.submit(preset, tokens, settings, noise, request.stop)
        else:
            items = generate(model, preset, tokens, settings, noise, request.stop)
        # Window-level word timing: each word of a window's text starts somewhere in the
        # window's speech (see WindowWords for why nothing finer is known).
        words = WindowWords(SPEECH_WINDOW)
        finished = False
        try:
            for item in items:
                if item is WAITING:
                    yield AudioPiece(np.zeros(0, np.float32), waiting_for_text=True)
                    continue
                if not item.kept:
                    continue
                span = tokens.char_span(*item.tokens)
                if span is None:  # speech after the text ran out: no new text in this window
                    end = len(tokens.text.rstrip())
                    span = (end, end)
                marks = words.latent(item.window, span, tokens.text, item.audio.size)
                yield AudioPiece(item.audio, text_span=span, words=marks)
            finished = not request.stop.is_set()
        finally:
            items.close()  # leaves the batch (or closes the generator) at once
        rest = words.rest() if finished else []
        if rest:
            # The model ended (EOS, latent cap) before the place the spread gave these
            # words in the last window: they start no later than the end of its audio.
            yield AudioPiece(np.zeros(0, np.float32), words=tuple((pos, 0) for pos in rest))
