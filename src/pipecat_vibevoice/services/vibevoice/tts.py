"""Pipecat TTS service over the pipecat-vibevoice :class:`~pipecat_vibevoice.engine.TTSEngine`.

The service adapts the engine's chunk stream to Pipecat frames and leaves the rest to
:class:`~pipecat.services.tts_service.TTSService`: text aggregation, audio contexts,
``TTSStartedFrame``/``TTSStoppedFrame``, text frames and the TTFB metric.

Text frames are word by word, the Pipecat way for services that know word times
(``push_text_frames=False``): every engine chunk lists the words that start in it and
when (Piper: the duration predictor's frames; VibeVoice: window-level estimates), and
the service reports them with ``add_word_timestamps`` right behind the chunk's audio.
The base turns them into ``TTSTextFrame``s whose ``pts`` is the word's presentation
time, so the output transport releases each word as its audio plays; the assistant
aggregator after ``transport.output()`` records only words that were heard, and RTVI
clients get ``bot-tts-text`` word by word. An interruption drops the words not yet
released with the audio not yet played.

Two ways text reaches the engine:

* ``TextAggregationMode.SENTENCE`` (default): ``run_tts`` gets one sentence and yields
  its audio inline, chunk by chunk, as the engine makes it. An interruption cancels the
  task running ``run_tts``; the cancellation lands in the engine's generator, whose
  stop event halts the model before its next unit of work.
* ``TextAggregationMode.TOKEN``: ``run_tts`` gets one LLM token at a time. The tokens
  of a turn (one audio context) are appended to the turn's
  :class:`~pipecat_vibevoice.engine.GrowingText`, which a background task speaks as
  one engine request, appending the audio to the audio context (see
  :mod:`.token_turns`). The context is closed once the turn's text is complete and
  the engine is done; an interruption cancels the task. The words come from the same
  engine stream, with times from the start of the turn's audio.

The service knows no transport: it only emits frames.
"""

from __future__ import annotations

import asyncio
import copy
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    StartFrame,
    TTSAudioRawFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.tracing.service_decorators import traced_tts
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from ...engine import GrowingText, TTSConfig, TTSEngine, get_tts_engine
from ...engine.controls import CONTROLS, VIBEVOICE_CONTROLS, ControlError
from ...engine.scheduling import listener_deadline, set_pull_deadline
from ..word_timed import WordTimedTTSService
from .token_turns import TokenTurn

#: Text spoken once per (engine, voice) at start, so the first real turn does not
#: pay for lazy initialisation and Pipecat never sees a silent first context.
WARMUP_TEXT = "Hello."

#: The numeric settings, each checked by its engine control (one range everywhere).
NUMERIC_SETTINGS = ("speed", "pitch", *VIBEVOICE_CONTROLS)

#: How long an ``EndFrame`` waits for open token turns to finish speaking.
END_OF_TURNS_TIMEOUT_S = 30.0

# Voices already warmed per engine. Engines are shared by every session of a
# process, so this keeps the warm-up a once-per-process cost.
_warmed: weakref.WeakKeyDictionary[TTSEngine, set[str]] = weakref.WeakKeyDictionary()


@dataclass
class VibeVoiceTTSSettings(TTSSettings):
    """Runtime settings of :class:`VibeVoiceTTSService`.

    Send ``TTSUpdateSettingsFrame(delta=VibeVoiceTTSService.Settings(speed=1.2))``
    to change them between utterances; an invalid value is refused with an
    ``ErrorFrame`` and the previous value stays.

    Attributes:
        voice: Voice name (case-insensitive, unique substrings accepted) or ``None``
            for the engine's default voice.
        speed: Speaking rate, 0.5..2.0 (1.0 = natural).
        pitch: Pitch factor, 0.5..2.0 (1.0 = natural).
        cfg_scale: VibeVoice classifier-free guidance scale, (0, 10]. No effect on Piper.
        inference_steps: VibeVoice diffusion steps per latent, 1..100. No effect on Piper.

    """

    speed: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    pitch: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    cfg_scale: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    inference_steps: int | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class VibeVoiceTTSService(WordTimedTTSService):
    """Speak with a :class:`TTSEngine` (VibeVoice-Realtime or the bundled Piper voice).

    Example::

        engine = await get_tts_engine(TTSConfig.from_env())   # once per process
        tts = VibeVoiceTTSService(engine)                      # once per session
        pipeline = Pipeline([..., llm, tts, transport.output(), ...])

    Nothing blocks the event loop: the engine runs the model in its worker threads,
    one chunk per call, and stops a request before its next chunk once it is
    cancelled. Audio comes out as ``TTSAudioRawFrame``s of the engine's chunk size
    (``TTSConfig.chunk_ms``) at the engine's sample rate unless ``sample_rate`` asks
    for another (then it is resampled).

    What can change at runtime, through ``TTSUpdateSettingsFrame`` (taking effect from
    the next engine request): ``voice``, ``speed``, ``pitch``, and for VibeVoice
    ``cfg_scale`` and ``inference_steps``. ``model`` and ``language`` are fixed by the
    engine.
    """

    Settings = VibeVoiceTTSSettings
    _settings: Settings

    def __init__(
        self,
        engine: TTSEngine | TTSConfig | None = None,
        *,
        config: TTSConfig | None = None,
        settings: Settings | None = None,
        text_aggregation_mode: TextAggregationMode | None = None,
        sample_rate: int | None = None,
        warmup: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the service.

        Args:
            engine: A shared :class:`TTSEngine` (loaded once per process and shared
                by every session), or a :class:`TTSConfig` for the process-wide engine
                (:func:`get_tts_engine`), loaded at start. ``None`` reads the config
                from the environment.
            config: Same as passing a ``TTSConfig`` as ``engine``.
            settings: Initial runtime settings; unset fields take the engine config's
                values (voice: the default voice, speed/pitch 1.0).
            text_aggregation_mode: ``SENTENCE`` (default) or ``TOKEN``, which feeds a
                turn's tokens to the engine as they come (speech starts before the
                sentence ends with VibeVoice).
            sample_rate: Output rate; defaults to the engine's ``config.sample_rate``.
            warmup: Speak a short text at start (once per engine and voice).
            engine_options: Extra backend options sent with every request (``seed``
                for reproducible speech on either engine; VibeVoice: ``solver``);
                unknown keys are ignored by backends that do not read them.
            **kwargs: Passed to :class:`~..word_timed.WordTimedTTSService`
                (``render_ahead_secs``: most audio rendered ahead of playback, 1.0 s)
                and :class:`TTSService`.

        """
        # 1. The engine: a shared instance, or the config of the process-wide one.
        if isinstance(engine, TTSEngine) and config is not None:
            raise ValueError("pass either an engine or a config, not both")
        if isinstance(engine, TTSConfig):
            engine, config = None, engine
        if engine is not None and not isinstance(engine, TTSEngine):
            raise TypeError(f"engine must be a TTSEngine or a TTSConfig, got {type(engine)!r}")
        self._engine: TTSEngine | None = engine
        self._engine_config: TTSConfig = (
            engine.config if engine else (config or TTSConfig.from_env())
        )

        # 2. Defaults: the engine config's voice and VibeVoice controls, natural speed.
        default_settings = self.Settings(
            model=None,
            voice=self._engine_config.default_voice,
            language=None,
            speed=1.0,
            pitch=1.0,
            cfg_scale=self._engine_config.cfg_scale,
            inference_steps=self._engine_config.inference_steps,
        )

        # 3. Settings delta (always wins), each number checked by its engine control.
        if settings is not None:
            settings = copy.copy(settings)  # the caller's object is left as it was
            settings.extra = dict(settings.extra)
            for name in NUMERIC_SETTINGS:
                value = getattr(settings, name)
                if is_given(value):
                    setattr(settings, name, CONTROLS[name].check(value))
            default_settings.apply_update(settings)

        # 4. The base service: it emits the start/stop frames and the word-timed text
        #    frames (no whole-sentence ones: we report word times); token mode needs
        #    one context (one engine request) per turn, not one per token.
        kwargs.pop("push_start_frame", None)
        kwargs.pop("push_stop_frames", None)
        if text_aggregation_mode == TextAggregationMode.TOKEN and not kwargs.get(
            "reuse_context_id_within_turn", True
        ):
            logger.warning(
                "token mode needs one context per turn: reuse_context_id_within_turn=True"
            )
            kwargs["reuse_context_id_within_turn"] = True
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            # Audio carries its context ID, so frames need not wait (see #4418).
            pause_frame_processing=False,
            text_aggregation_mode=text_aggregation_mode,
            sample_rate=sample_rate or self._engine_config.sample_rate,
            settings=default_settings,
            **kwargs,
        )

        # 5. Per-session state.
        self._warmup_enabled = warmup
        self._extra_options: dict[str, Any] = dict(engine_options or {})
        # Token mode: the open turn of each audio context.
        self._token_turns: dict[str, TokenTurn] = {}

    @property
    def engine(self) -> TTSEngine | None:
        """The engine, once known (given, or loaded at start)."""
        return self._engine

    def can_generate_metrics(self) -> bool:
        """TTFB, processing and usage metrics are all meaningful for a local model."""
        return True

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        """Load (or join) the engine, check the configured voice and warm it up."""
        await super().start(frame)
        try:
            if self._engine is None:
                self._engine = await get_tts_engine(self._engine_config)
            else:
                await self._engine.initialize()
        except Exception as exc:
            await self.push_error(
                error_msg=f"TTS engine could not be loaded: {exc}",
                exception=exc,
                category=ErrorCategory.SERVER,
                force_treat_as_permanent=True,
            )
            return
        engine = self._engine
        self._settings.model = engine.backend.name
        self._sync_model_name_to_metrics()
        try:
            self._settings.voice = engine.resolve_voice(self._settings.voice)
        except ValueError as exc:
            fallback = engine.resolve_voice(None)
            await self.push_error(
                error_msg=f"TTS voice {self._settings.voice!r} refused ({exc}); using {fallback!r}",
                exception=exc,
                category=ErrorCategory.APPLICATION,
            )
            self._settings.voice = fallback
        if self._is_streaming_tokens:
            logger.info(f"{self}: token mode, one engine request per turn")
        if self._warmup_enabled:
            await self._warm_up(engine, self._settings.voice)

    async def _warm_up(self, engine: TTSEngine, voice: str) -> None:
        """Speak a short text once per engine and voice; failures are logged, not fatal."""
        warmed = _warmed.setdefault(engine, set())
        if voice in warmed:
            return
        started = time.perf_counter()
        try:
            await engine.synthesize(WARMUP_TEXT, voice, **self._engine_options(engine))
            warmed.add(voice)
            logger.debug(f"{self}: warmed voice {voice} in {time.perf_counter() - started:.2f}s")
        except Exception as exc:
            logger.warning(f"{self}: warm-up of voice {voice} failed: {exc}")

    async def stop(self, frame: EndFrame) -> None:
        """Let open token turns finish speaking, then stop."""
        # EndFrame ends the text too: close the turns and let their speaker tasks
        # finish, so their audio reaches the audio contexts before playback ends.
        for turn in self._token_turns.values():
            turn.close()
        tasks = [t.task for t in self._token_turns.values() if t.task and not t.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=END_OF_TURNS_TIMEOUT_S)
        await super().stop(frame)
        await self._cancel_turns()

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop all synthesis at once."""
        await self._cancel_turns()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        """Release per-session state; the shared engine stays loaded for other sessions."""
        await self._cancel_turns()
        await super().cleanup()

    # -- settings -----------------------------------------------------------------------

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Validate and apply a settings delta; refused fields keep their old value.

        A refused value is reported as an ``ErrorFrame`` (category APPLICATION, so the
        service stays usable) and the next utterance speaks with the old settings.
        Nothing needs rebuilding: every engine request reads the settings afresh.
        """
        for name in NUMERIC_SETTINGS:
            value = getattr(delta, name, NOT_GIVEN)
            if not is_given(value):
                continue
            try:
                setattr(delta, name, CONTROLS[name].check(value))
            except ControlError as exc:
                setattr(delta, name, NOT_GIVEN)
                await self._refuse_setting(name, exc)
        if is_given(delta.voice):
            if self._engine is not None and self._engine.is_initialized:
                try:
                    delta.voice = self._engine.resolve_voice(delta.voice)
                except ValueError as exc:
                    delta.voice = NOT_GIVEN
                    await self._refuse_setting("voice", exc)
            # Before start the voice is checked in start().

        changed = await super()._update_settings(delta)
        if not changed:
            return changed
        unhandled = {k for k in changed if k in ("model", "language")}
        if self._engine is not None and self._engine.is_initialized:
            backend = self._engine.backend
            if not backend.diffusion_controls:
                ignored = {k for k in changed if k in VIBEVOICE_CONTROLS}
                if ignored:
                    logger.warning(
                        f"{self}: {', '.join(sorted(ignored))} only affect VibeVoice, "
                        f"not {backend.name}"
                    )
            if "voice" in changed and self._warmup_enabled:
                await self._warm_up(self._engine, self._settings.voice)
        unhandled |= {k for k in changed if k in self._settings.extra}
        if unhandled:
            self._warn_unhandled_updated_settings(unhandled)
        return changed

    async def _refuse_setting(self, name: str, exc: Exception) -> None:
        await self.push_error(
            error_msg=f"TTS setting {name} refused: {exc}",
            exception=exc,
            category=ErrorCategory.APPLICATION,
        )

    def _engine_options(self, engine: TTSEngine) -> dict[str, Any]:
        """Backend options from the settings, for the backends that read them."""
        options = dict(self._extra_options)
        for name in engine.backend.diffusion_controls:
            options[name] = getattr(self._settings, name)
        return options

    def _request_kwargs(self, engine: TTSEngine) -> dict[str, Any]:
        """Everything but the text for one engine request, frozen at request time."""
        return {
            "speaker_id": self._settings.voice,
            "speed": self._settings.speed,
            "pitch": self._settings.pitch,
            **self._engine_options(engine),
        }

    # -- synthesis ----------------------------------------------------------------------

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Speak ``text`` (a sentence, or one token in TOKEN mode) in audio context ``context_id``.

        Yields ``TTSAudioRawFrame``s as the engine produces them, or an ``ErrorFrame``
        naming the cause when the engine refuses the text or fails. In TOKEN mode it
        yields ``None``: the turn's audio comes from its speaker task.
        """
        engine = self._engine
        if engine is None or not engine.is_initialized:
            yield ErrorFrame(
                error=f"{self}: TTS engine is not loaded; cannot speak [{text}]",
                category=ErrorCategory.SERVER,
            )
            return
        if self._is_streaming_tokens:
            self._feed_token(engine, text, context_id)
            yield None
            return
        await self.start_tts_usage_metrics(text)
        async for frame in self._synthesize_frames(engine, text, context_id):
            yield frame

    async def _synthesize_frames(
        self, engine: TTSEngine, text: str | GrowingText, context_id: str
    ) -> AsyncIterator[Frame]:
        """One engine request as frames: audio chunks, or an ErrorFrame on failure.

        Once a chunk's audio frame has been taken (and so appended to the audio
        context), the words that start in it are reported with
        ``add_word_timestamps``: they follow their audio in the context's queue, and
        their times are placed on the context's timeline (:class:`~..word_timed.ContextClock`).
        ``aclosing`` makes sure the engine's generator is closed on every exit,
        cancellation included, which sets its stop event before the next model call.
        """
        try:
            chunks = engine.stream_chunks(text, **self._request_kwargs(engine))
            async with aclosing(chunks):
                while True:
                    self._set_pull_deadline(context_id)
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    words = self._place_words(context_id, chunk)
                    yield await self._audio_frame(chunk.pcm, engine, context_id)
                    await self._report_words(context_id, words)
                    await self._pace(context_id)
        except ValueError as exc:
            # Bad voice, text or controls: the request's fault, not the engine's.
            logger.warning(f"{self}: request refused: {exc}")
            self._refused(context_id)
            yield ErrorFrame(
                error=f"TTS request refused: {exc}",
                exception=exc,
                category=ErrorCategory.APPLICATION,
            )
        except Exception as exc:
            logger.error(f"{self}: engine failed: {exc!r}")
            yield ErrorFrame(
                error=f"TTS engine failed: {exc!r}",
                exception=exc,
                category=ErrorCategory.SERVER,
            )

    def _set_pull_deadline(self, context_id: str) -> None:
        """Tell the engine's pool when this context's listener runs out of audio.

        The context's clock knows how much of its audio is still unplayed (all the
        sentences of a turn share one context), so the next sentence of a reply that
        is still playing waits behind listeners about to run dry, and a reply with no
        audio out yet counts as a first chunk, due a fixed slack after its first pull
        (:func:`...engine.scheduling.listener_deadline`, the rule the TTS server's
        streams follow too). Read by the
        engine's pool only when it is a ``DeadlineExecutor`` (the bot's ``/v1/tts/stream``
        router installs one on the shared engine, ``--tts-edf``).
        """
        clock = self._clock(context_id)  # opened by the context's first pull
        deadline, first_chunk = listener_deadline(clock.opened_at, clock.first_at, clock.audio_s)
        set_pull_deadline(deadline, first_chunk=first_chunk)

    async def _audio_frame(self, pcm: bytes, engine: TTSEngine, context_id: str) -> Frame:
        if self.sample_rate != engine.config.sample_rate:
            pcm = await self._resampler.resample(pcm, engine.config.sample_rate, self.sample_rate)
        return TTSAudioRawFrame(
            audio=pcm, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
        )

    # -- token mode ---------------------------------------------------------------------

    def _feed_token(self, engine: TTSEngine, token: str, context_id: str) -> None:
        """Append a token to its turn's text, opening the turn (and its speaker) on the first."""
        turn = self._token_turns.get(context_id)
        if turn is None or turn.closed:
            turn = self._token_turns[context_id] = TokenTurn(context_id)
            turn.task = self.create_task(
                self._speak_turn(engine, turn), name=f"tts-turn-{context_id[:8]}"
            )
        turn.append(token)

    async def flush_audio(self, context_id: str | None = None) -> None:
        """End of the turn's text: close it, so the engine speaks the rest and finishes."""
        if context_id is None:
            for turn in self._token_turns.values():
                turn.close()
            return
        turn = self._token_turns.get(context_id)
        if turn is not None:
            turn.close()

    async def _speak_turn(self, engine: TTSEngine, turn: TokenTurn) -> None:
        """Speak one turn's growing text into its audio context, then close the context."""
        context_id = turn.context_id
        try:
            frames = self._synthesize_frames(engine, turn.text, context_id)
            async with aclosing(frames):
                async for frame in frames:
                    await self.append_to_audio_context(context_id, frame)
            # A failed request stops reading; wait for the end of the turn anyway,
            # so the context is not closed before the turn's text is all in.
            await turn.text.wait_closed()
            if self.audio_context_available(context_id):
                await self.remove_audio_context(context_id)
        finally:
            if self._token_turns.get(context_id) is turn:
                del self._token_turns[context_id]
            if len(turn.text):
                logger.debug(f"{self}: turn {context_id[:8]} done ({turn.text.pieces} pieces)")

    async def _cancel_turn(self, context_id: str) -> None:
        """Stop a turn's engine request (cancel first) and close its text."""
        turn = self._token_turns.pop(context_id, None)
        if turn is None:
            return
        # Cancel first: to the engine a closed text means "complete, speak the rest",
        # so closing before cancelling could start one more sentence.
        if turn.task is not None and not turn.task.done():
            await self.cancel_task(turn.task)
        turn.close()

    async def _cancel_turns(self) -> None:
        for context_id in list(self._token_turns):
            await self._cancel_turn(context_id)

    def _turn_ids(self) -> list[str]:
        return list(self._token_turns)
