"""What a voice model must provide to sit behind :class:`~pipecat_vibevoice.engine.TTSEngine`.

A backend is synchronous and blocking on purpose: model code runs in a worker
thread, and the engine pulls **one chunk per executor call**, checking a stop
event between chunks. A Python thread cannot be cancelled, so this is what makes
"stop within one chunk" possible without leaving work running after the caller
has gone.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendUnavailable
from ..growing_text import GrowingText

__all__ = ["AudioPiece", "BackendUnavailable", "SpeechBackend", "SynthesisRequest"]


@dataclass
class SynthesisRequest:
    """Everything a backend needs for one utterance.

    ``stop`` is set by the engine when the consumer goes away; backends check it
    before every unit of work (a Piper decoder window, a VibeVoice latent).
    ``options`` carries backend-specific knobs (``cfg_scale``, ``inference_steps``).
    ``growing_text`` is set only for backends with ``supports_text_stream``: the text
    then arrives there while the request runs and ``text`` is empty.
    """

    text: str
    voice: str
    speed: float = 1.0
    stop: threading.Event = field(default_factory=threading.Event)
    options: dict[str, Any] = field(default_factory=dict)
    growing_text: GrowingText | None = None


@dataclass
class AudioPiece:
    """A piece of model audio (float32 mono at the backend's native rate) and what it covers.

    ``text_span`` is the (start, end) character range of the request text this audio
    speaks, when the backend knows it; ``None`` otherwise. A piece with
    ``waiting_for_text`` carries no audio: the backend needs more streamed text.

    ``words`` marks the words whose speech starts in this piece: ``(position, sample)``,
    the position of the word's first character in the request text (coordinates as
    ``text_span``) and the sample of this piece's audio where it starts. Marks travel
    with the audio through speed change and resampling (``chunks.SpanTimeline``); a
    piece without audio may carry marks, which then sit at the end of the audio so far.
    """

    audio: np.ndarray
    text_span: tuple[int, int] | None = None
    waiting_for_text: bool = False
    words: tuple[tuple[int, int], ...] = ()


class SpeechBackend(ABC):
    """A voice model: load it, list its voices, stream audio for a text."""

    #: Short engine name, shown in health checks and logs.
    name: str = "backend"
    #: Diffusion controls (``cfg_scale``, ``inference_steps``) this backend reads from
    #: a request's options; callers send them only to backends that list them.
    diffusion_controls: tuple[str, ...] = ()
    #: Native output rate in Hz.
    sample_rate: int = 24000
    #: True when ``speed`` is applied by the model itself (no DSP time-stretch needed):
    #: Piper (its duration predictor's ``length_scale``). VibeVoice has no native
    #: speed today, so the engine time-stretches its audio (``audio.SpeedPitchStage``).
    native_speed: bool = False
    #: True when :meth:`stream` can consume ``request.growing_text`` as text arrives;
    #: otherwise the engine feeds it whole sentences as they complete.
    supports_text_stream: bool = False

    @abstractmethod
    def load(self) -> None:
        """Load weights (blocking). Raise :class:`BackendUnavailable` when impossible."""

    @abstractmethod
    def voices(self) -> list[str]:
        """Names of the available voices, default first."""

    @abstractmethod
    def stream(self, request: SynthesisRequest) -> Iterator[AudioPiece]:
        """Yield audio pieces for ``request.text``; stop early once ``request.stop`` is set."""

    def warmup(self) -> None:
        """Run one tiny synthesis so the first real request does not pay for lazy init."""
        request = SynthesisRequest(text="Hello.", voice=self.voices()[0])
        for _ in self.stream(request):
            pass

    @abstractmethod
    def unload(self) -> None:
        """Free model memory. The backend may be loaded again afterwards."""

    def release_idle_memory(self) -> None:
        """Give scratch memory back while no stream runs (called from a worker thread).

        Streams normally release at their end; one cut short (cancelled, failed) may
        leave it held until the next one completes. Default: nothing to do.
        """
        return None

    def concurrent_streams(self) -> int | None:
        """How many streams this backend serves at once, if it batches them; else None.

        A batching backend's ``stream`` blocks a worker thread while its utterance
        waits for the next batched step, so the engine gives it at least this many
        worker threads and admits at most this many streams at a time (more would
        hold threads while queued and starve the running ones).
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for the health check (model path, device, dtype...)."""
        return {"engine": self.name, "native_sample_rate": self.sample_rate}


def pick_torch_device(config: Any) -> str:
    """``cuda`` when asked for or available under ``device=auto``, else ``cpu`` (torch backends).

    Raises :class:`BackendUnavailable` when CUDA is asked for and torch sees none.
    """
    import torch

    from ..errors import BackendUnavailable

    if config.device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if config.device == "cuda":
        raise BackendUnavailable("device=cuda was asked for but torch sees no CUDA device")
    return "cpu"
