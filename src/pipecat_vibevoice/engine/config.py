"""Engine configuration: one dataclass, filled from defaults, environment or CLI flags.

Every field can be set three ways, in rising priority: the dataclass default, an
environment variable ``PIPECAT_VIBEVOICE_<FIELD>`` (upper case), and a CLI flag
``--<field-with-dashes>`` (the rules: :mod:`pipecat_vibevoice.settings_base`).
Validation happens in ``__post_init__`` so a bad value fails at start-up with a message
that names the field, not deep in the audio path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

from ..settings_base import EnvSettings, SettingsError
from .controls import CFG_SCALE, INFERENCE_STEPS, ControlError

EngineChoice = Literal["auto", "vibevoice", "piper", "vibevoice-1.5b"]
DeviceChoice = Literal["auto", "cuda", "cpu"]
DtypeChoice = Literal["auto", "bfloat16", "float32", "float64"]

# The same values as tuples, for validation (the flags take their choices from the Literal).
ENGINE_CHOICES: tuple[str, ...] = get_args(EngineChoice)
DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceChoice)
DTYPE_CHOICES: tuple[str, ...] = get_args(DtypeChoice)

#: Hub id of the official checkpoint; only used when it is already in the local HF cache.
DEFAULT_VIBEVOICE_MODEL = "microsoft/VibeVoice-Realtime-0.5B"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


class ConfigError(SettingsError):
    """A configuration value is invalid; the message names the field and the allowed range."""


@dataclass
class TTSConfig(EnvSettings):
    """Settings of a :class:`~pipecat_vibevoice.engine.TTSEngine`.

    Attributes:
        engine: ``auto`` uses VibeVoice when its weights are available locally and falls
            back to the bundled Piper voice otherwise; ``vibevoice`` or ``piper`` force one.
            ``vibevoice-1.5b`` is transformers' VibeVoice-1.5B, which makes voices from
            reference audio (only when asked for: ``auto`` never picks it).
        model_path: VibeVoice checkpoint directory or hub id (hub ids resolve only from
            the local cache: nothing is downloaded unless ``allow_download`` is set). For
            ``vibevoice-1.5b``, a transformers-format directory (model and processor).
        voices_dir: VibeVoice-Realtime: extra directory of voice presets (``*.pt``).
            VibeVoice-1.5B: reference WAVs and their ``voices.json`` (``engine.voices``);
            ``add_voice(..., persist=True)`` writes there.
        sample_rate: Output sample rate in Hz; engine audio is resampled to it.
        device: ``auto`` picks CUDA when present, else CPU.
        dtype: VibeVoice compute dtype; ``auto`` is bfloat16 on CUDA and float32 on CPU.
            ``float64`` is for reference runs (tests): two code paths then agree to far
            below anything audible, on every CPU.
        streaming: Emit chunks as they are made; off means one chunk per utterance.
        chunk_ms: Duration of every emitted chunk except the last.
        gpu_memory_fraction: Share of GPU memory this process may take (CUDA only).
        default_voice: Voice used when ``speaker_id`` is 0/None; engine default if unset.
        max_text_chars: Longest accepted text; longer input is refused, not truncated.
        load_retries: Attempts at loading a model before giving up.
        num_threads: CPU threads per inference call (0 = Piper: the cores shared among
            the engine's workers; VibeVoice: torch's default).
        piper_windows: Piper's decoder windows in frames (11.6 ms each), comma-separated,
            the last repeated to the end of a sentence; empty = the backend's schedule,
            small first for a fast first chunk (``backends.piper.DEFAULT_SCHEDULE``).
        cfg_scale: VibeVoice classifier-free guidance scale.
        inference_steps: VibeVoice diffusion steps per latent.
        max_batch: VibeVoice utterances stepped together in one batched model step
            (several sessions on one GPU); more wait in FIFO order. 1 runs every
            utterance in its own loop, unbatched.
        release_memory: Give the bundled voice's scratch memory back to the OS after
            each utterance (ONNX Runtime arena shrink, glibc mmap threshold pinned at
            1 MiB): half the resident memory and no growth in long runs; see
            :mod:`pipecat_vibevoice.engine.memory`.
        cache_dir: Where derived artefacts (Piper's split streaming graphs) are kept.
        allow_download: Let VibeVoice fetch weights from the hub (off: never any network).

    """

    GROUP: ClassVar[str] = "engine"
    ERROR: ClassVar[type[ValueError]] = ConfigError

    engine: EngineChoice = field(
        default="auto",
        metadata=_help(
            "auto | vibevoice | piper | vibevoice-1.5b (auto falls back to the bundled voice)"
        ),
    )
    model_path: str = field(
        default=DEFAULT_VIBEVOICE_MODEL,
        metadata=_help("VibeVoice checkpoint dir or hub id (local cache only)"),
    )
    voices_dir: str | None = field(
        default=None,
        metadata=_help("voice folder: presets (*.pt) or, for vibevoice-1.5b, WAVs + voices.json"),
    )
    sample_rate: int = field(default=24000, metadata=_help("output sample rate in Hz"))
    device: DeviceChoice = field(default="auto", metadata=_help("auto | cuda | cpu"))
    dtype: DtypeChoice = field(
        default="auto",
        metadata=_help("VibeVoice compute dtype (auto: bf16 on CUDA, float32 on CPU)"),
    )
    streaming: bool = field(default=True, metadata=_help("stream chunks as they are made"))
    chunk_ms: int = field(
        default=80, metadata=_help("chunk duration in ms (all chunks but the last)")
    )
    gpu_memory_fraction: float = field(
        default=0.4, metadata=_help("share of GPU memory to use (CUDA only)")
    )
    default_voice: str | None = field(
        default=None, metadata=_help("voice used when none is asked for")
    )
    max_text_chars: int = field(default=100_000, metadata=_help("refuse texts longer than this"))
    load_retries: int = field(default=3, metadata=_help("model loading attempts"))
    num_threads: int = field(
        default=0,
        metadata=_help("CPU threads per inference call (0 = share the cores among the workers)"),
    )
    piper_windows: str = field(
        default="",
        metadata=_help("Piper decoder windows in frames, e.g. 24,48,96,256,512 (empty: default)"),
    )
    cfg_scale: float = field(
        default=CFG_SCALE.default, metadata=_help("VibeVoice classifier-free guidance scale")
    )
    inference_steps: int = field(
        default=INFERENCE_STEPS.default, metadata=_help("VibeVoice diffusion steps per latent")
    )
    max_batch: int = field(
        default=8,
        metadata=_help("VibeVoice utterances batched into one model step (1 = unbatched)"),
    )
    release_memory: bool = field(
        default=True,
        metadata=_help("give the CPU voice's scratch memory back after each utterance"),
    )
    cache_dir: str | None = field(default=None, metadata=_help("directory for derived model files"))
    allow_download: bool = field(
        default=False, metadata=_help("allow fetching VibeVoice weights from the hub")
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------

    def piper_window_frames(self) -> tuple[int, ...] | None:
        """``piper_windows`` as frame counts (None: the backend's default)."""
        if not self.piper_windows.strip():
            return None
        try:
            frames = tuple(int(part) for part in self.piper_windows.split(","))
        except ValueError:
            frames = ()
        if not frames or len(frames) > 16 or not all(1 <= f <= 4096 for f in frames):
            raise ConfigError(
                "piper_windows must be 1-16 comma-separated frame counts within 1..4096, "
                f"got {self.piper_windows!r}"
            )
        return frames

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if self.engine not in ENGINE_CHOICES:
            raise ConfigError(f"engine must be one of {ENGINE_CHOICES}, got {self.engine!r}")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        if not 8000 <= self.sample_rate <= 96000:
            raise ConfigError(f"sample_rate must be within 8000..96000 Hz, got {self.sample_rate}")
        if not 10 <= self.chunk_ms <= 2000:
            raise ConfigError(f"chunk_ms must be within 10..2000 ms, got {self.chunk_ms}")
        if (self.sample_rate * self.chunk_ms) % 1000:
            raise ConfigError(
                f"chunk_ms={self.chunk_ms} is not a whole number of samples at "
                f"{self.sample_rate} Hz"
            )
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ConfigError(
                f"gpu_memory_fraction must be within (0, 1], got {self.gpu_memory_fraction}"
            )
        if self.max_text_chars < 1:
            raise ConfigError(f"max_text_chars must be positive, got {self.max_text_chars}")
        if self.load_retries < 1:
            raise ConfigError(f"load_retries must be at least 1, got {self.load_retries}")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")
        self.piper_window_frames()  # raises on a bad list
        for control in (CFG_SCALE, INFERENCE_STEPS):
            try:
                setattr(self, control.name, control.check(getattr(self, control.name)))
            except ControlError as exc:
                raise ConfigError(str(exc)) from None
        if not 1 <= self.max_batch <= 64:
            raise ConfigError(f"max_batch must be within 1..64, got {self.max_batch}")

    @property
    def chunk_samples(self) -> int:
        """Samples in every emitted chunk but the last."""
        return self.sample_rate * self.chunk_ms // 1000

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for logs and health output."""
        return asdict(self)
