"""Pipecat TTS service over the pipecat-vibevoice :class:`~pipecat_vibevoice.engine.TTSEngine`.

The service adapts the engine's async PCM stream to Pipecat frames and leaves the
rest to :class:`~pipecat.services.tts_service.TTSService`: text aggregation, audio
contexts, ``TTSStartedFrame``/``TTSStoppedFrame``, text frames and the TTFB metric.

Two ways text reaches the engine:

* ``TextAggregationMode.SENTENCE`` (default): ``run_tts`` gets one sentence and
  yields its audio inline, chunk by chunk, as the engine makes it. An interruption
  cancels the task running ``run_tts``; the cancellation lands in the engine's
  generator, whose stop event halts the model before its next unit of work.
* ``TextAggregationMode.TOKEN``: ``run_tts`` gets one LLM token at a time. The
  tokens of a turn are fed into one :class:`~.text_stream.TextStream` that a
  background task speaks as one engine request (when the engine accepts a text
  stream) or sentence by sentence (fallback). Audio is appended to the turn's
  audio context as it arrives; the context is closed once the turn has been
  flushed and the engine is done. An interruption cancels that task. Each
  sentence's ``TTSTextFrame`` is held until the engine's audio has passed its text
  (chunk text spans), so only what was spoken reaches the assistant context.

The service knows no transport: it only emits frames.
"""

from __future__ import annotations

import asyncio
import copy
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.tracing.service_decorators import traced_tts
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from ...engine import TTSConfig, TTSEngine, get_tts_engine
from ...engine.controls import CONTROLS, VIBEVOICE_CONTROLS, ControlError
from .token_turns import HeldText, TextStream, engine_accepts_text_stream, sentences_from

#: Text spoken once per (engine, voice) at start, so the first real turn does not
#: pay for lazy initialisation and Pipecat never sees a silent first context.
WARMUP_TEXT = "Hello."

#: The numeric settings, each checked by its engine control (one range everywhere).
NUMERIC_SETTINGS = ("speed", "pitch", *VIBEVOICE_CONTROLS)

# Voices already warmed per engine. Engines are shared by every session of a
# process, so this keeps the warm-up a once-per-process cost.
_warmed: weakref.WeakKeyDictionary[TTSEngine, set[str]] = weakref.WeakKeyDictionary()


def _not_given() -> Any:
    return NOT_GIVEN


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

    speed: float | NotGiven = field(default_factory=_not_given)
    pitch: float | NotGiven = field(default_factory=_not_given)
    cfg_scale: float | NotGiven = field(default_factory=_not_given)
    inference_steps: int | NotGiven = field(default_factory=_not_given)


class VibeVoiceTTSService(TTSService):
    """Speak with a :class:`TTSEngine` (VibeVoice-Realtime or the bundled Piper voice).

    Example::

        engine = await get_tts_engine(TTSConfig.from_env())   # once per process
        tts = VibeVoiceTTSService(engine)                      # once per session
        pipeline = Pipeline([..., llm, tts, transport.output(), ...])

    Audio comes out as ``TTSAudioRawFrame``s of the engine's chunk size
    (``TTSConfig.chunk_ms``) at the engine's sample rate unless ``sample_rate`` asks
    for another (then it is resampled).
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
            **kwargs: Passed to :class:`TTSService`.

        """
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

        default_settings = self.Settings(
            model=None,
            voice=self._engine_config.default_voice,
            language=None,
            speed=1.0,
            pitch=1.0,
            cfg_scale=self._engine_config.cfg_scale,
            inference_steps=self._engine_config.inference_steps,
        )
        if settings is not None:
            settings = copy.copy(settings)  # the caller's object is left as it was
            settings.extra = dict(settings.extra)
            for name in NUMERIC_SETTINGS:
                value = getattr(settings, name)
                if is_given(value):
                    setattr(settings, name, CONTROLS[name].check(value))
            default_settings.apply_update(settings)

        kwargs.pop("push_start_frame", None)
        kwargs.pop("push_stop_frames", None)
        if text_aggregation_mode == TextAggregationMode.TOKEN and not kwargs.get(
            "reuse_context_id_within_turn", True
        ):
            # One context per token would mean one engine request per token.
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
        self._warmup_enabled = warmup
        self._extra_options: dict[str, Any] = dict(engine_options or {})
        # Token mode: the open text stream of each audio context, and its speaker task.
        self._token_streams: dict[str, TextStream] = {}
        self._token_tasks: dict[str, asyncio.Task] = {}
        self._held_text: dict[str, HeldText] = {}
        self._stream_text_ok: bool | None = None
        # Contexts whose text the engine refused (bad input, already reported).
        self._refused_contexts: set[str] = set()

    # -- properties ---------------------------------------------------------------------

    @property
    def engine(self) -> TTSEngine | None:
        """The engine, once known (given, or loaded at start)."""
        return self._engine

    @property
    def streams_text_into_engine(self) -> bool:
        """True when TOKEN mode feeds one engine request per turn (not the sentence fallback)."""
        if self._engine is None:
            return False
        if self._stream_text_ok is None:
            self._stream_text_ok = engine_accepts_text_stream(self._engine)
        return self._stream_text_ok

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
            mode = (
                "one engine stream per turn"
                if self.streams_text_into_engine
                else ("sentence fallback (engine takes no text stream)")
            )
            logger.info(f"{self}: token mode, {mode}")
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
        """Let open token streams finish speaking, then stop."""
        # EndFrame ends the text too: close the streams and let their speaker tasks
        # finish, so their audio reaches the audio contexts before playback ends.
        for stream in self._token_streams.values():
            stream.close()
        tasks = [t for t in self._token_tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=30.0)
        await super().stop(frame)
        await self._cancel_token_streams()

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop all synthesis at once."""
        await self._cancel_token_streams()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        """Release per-session state; the shared engine stays loaded for other sessions."""
        await self._cancel_token_streams()
        await super().cleanup()

    # -- settings -----------------------------------------------------------------------

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Validate and apply a settings delta; refused fields keep their old value.

        A refused value is reported as an ``ErrorFrame`` (category APPLICATION, so the
        service stays usable) and the next utterance speaks with the old settings.
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
            if self._engine.backend.name != "vibevoice":
                ignored = {k for k in changed if k in VIBEVOICE_CONTROLS}
                if ignored:
                    logger.warning(
                        f"{self}: {', '.join(sorted(ignored))} only affect VibeVoice, "
                        f"not {self._engine.backend.name}"
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
        if engine.backend.name == "vibevoice":
            options.update({name: getattr(self._settings, name) for name in VIBEVOICE_CONTROLS})
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
        naming the cause when the engine refuses the text or fails.
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
            yield None  # audio arrives from the turn's speaker task
            return

        await self.start_tts_usage_metrics(text)
        async for frame in self._synthesize_frames(engine, text, context_id):
            yield frame

    async def _synthesize_frames(
        self,
        engine: TTSEngine,
        text: str | AsyncIterable[str],
        context_id: str,
        before_audio: Callable[[int], Awaitable[None]] | None = None,
    ) -> AsyncIterator[Frame]:
        """One engine request as frames: audio chunks, or an ErrorFrame on failure.

        ``before_audio(offset)`` is awaited before each chunk whose text span starts at
        ``offset`` (a character index of the request text), so a caller can place text
        frames right after the audio that spoke them. ``aclosing`` makes sure the
        engine's generator is closed on every exit, cancellation included, which sets
        its stop event before the next model call.
        """
        try:
            async with aclosing(_engine_audio(engine, text, self._request_kwargs(engine))) as it:
                async for pcm, span_start in it:
                    if before_audio is not None and span_start is not None:
                        await before_audio(span_start)
                    yield await self._audio_frame(pcm, engine, context_id)
        except ValueError as exc:
            # Bad voice, text or controls: the request's fault, not the engine's.
            logger.warning(f"{self}: request refused: {exc}")
            self._refused_contexts.add(context_id)
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

    async def tts_process_generator(
        self, context_id: str, generator: AsyncGenerator[Frame | None, None]
    ) -> None:
        """Route ``run_tts`` output; in sentence mode the context is always complete after it.

        The base decides from "did this call yield audio" whether ``run_tts`` works
        inline (then it closes the context at the end of the turn) or hands off to a
        receive loop (then it waits for the service to close it). Our sentence path is
        always inline, also when a sentence failed and yielded only an ErrorFrame;
        without this the failed context would hold the next utterance for
        ``stop_frame_timeout_s`` (3 s).
        """
        await super().tts_process_generator(context_id, generator)
        if not self._is_streaming_tokens:
            self._is_yielding_frames_synchronously = True

    async def _record_context_audio_outcome(self, context_id: str, received_audio: bool) -> None:
        """Do not count a context whose text the engine refused as a silent service.

        Pipecat writes a TTS off after 3 silent contexts in a row, to catch providers
        that fail without saying so. A refused request was already reported with its
        cause and says nothing about the engine's health, so it must not count
        (engine failures still do).
        """
        if context_id in self._refused_contexts:
            self._refused_contexts.discard(context_id)
            if not received_audio:
                return
        await super()._record_context_audio_outcome(context_id, received_audio)

    async def _audio_frame(self, chunk: bytes, engine: TTSEngine, context_id: str) -> Frame:
        if self.sample_rate != engine.config.sample_rate:
            chunk = await self._resampler.resample(
                chunk, engine.config.sample_rate, self.sample_rate
            )
        return TTSAudioRawFrame(
            audio=chunk, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
        )

    # -- token mode ---------------------------------------------------------------------

    def _feed_token(self, engine: TTSEngine, text: str, context_id: str) -> None:
        """Append a token to its turn's text stream, opening the stream on the first one."""
        stream = self._token_streams.get(context_id)
        if stream is None or stream.closed:
            stream = TextStream()
            self._token_streams[context_id] = stream
            self._held_text[context_id] = HeldText()
            self._token_tasks[context_id] = self.create_task(
                self._speak_token_stream(engine, stream, context_id),
                name=f"tts-stream-{context_id[:8]}",
            )
        stream.put(text)

    async def flush_audio(self, context_id: str | None = None) -> None:
        """End of the turn's text: close its stream so the engine finishes speaking it."""
        if context_id is None:
            for stream in self._token_streams.values():
                stream.close()
            return
        stream = self._token_streams.get(context_id)
        if stream is not None:
            stream.close()

    async def _speak_token_stream(
        self, engine: TTSEngine, stream: TextStream, context_id: str
    ) -> None:
        """Speak one turn's text stream into its audio context, then close the context."""
        try:
            if self.streams_text_into_engine:
                await self._speak_into_context(
                    engine,
                    stream,
                    context_id,
                    before_audio=lambda offset: self._release_text(context_id, offset),
                )
            else:
                spoken = 0
                language = self.text_aggregation_language
                async with aclosing(sentences_from(stream, language)) as sentences:
                    async for sentence in sentences:
                        await self._speak_into_context(engine, sentence, context_id)
                        # Offsets of the turn text are not those of a sentence request:
                        # release by the characters spoken so far (+1 per separator).
                        spoken += len(sentence) + 1
                        await self._release_text(context_id, spoken)
            # A failed request stops consuming; wait for the end of the turn anyway,
            # so the context is not closed before the turn's text frames are queued.
            await stream.drain()
            await self._release_text(context_id, None)
            if self.audio_context_available(context_id):
                await self.remove_audio_context(context_id)
        finally:
            if self._token_streams.get(context_id) is stream:
                del self._token_streams[context_id]
                self._token_tasks.pop(context_id, None)
                self._held_text.pop(context_id, None)
            if stream.chars:
                logger.debug(f"{self}: token stream {context_id[:8]} done ({stream.pieces} pieces)")

    async def _speak_into_context(
        self,
        engine: TTSEngine,
        text: str | AsyncIterable[str],
        context_id: str,
        before_audio: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        frames = self._synthesize_frames(engine, text, context_id, before_audio)
        async with aclosing(frames):
            async for frame in frames:
                await self.append_to_audio_context(context_id, frame)

    async def _push_sequencer_frames(self, frames: list[Frame], context_id: str | None) -> None:
        """In TOKEN mode, hold each sentence's ``TTSTextFrame`` until its audio is out.

        Pipecat regroups streamed tokens into sentences and emits a sentence's
        ``TTSTextFrame`` (what the assistant context records as said) as soon as the
        sentence is complete: before the engine has spoken it. After an interruption the
        context would then hold words the user never heard. Held frames are released
        into the audio context once the engine's audio has moved past their text (by
        the chunks' text spans) and are dropped with the context on interruption.
        Frames queued behind a held one wait too, so their order is kept.
        """
        held = self._held_text.get(context_id) if context_id else None
        if held is None:
            await super()._push_sequencer_frames(frames, context_id)
            return
        passing: list[Frame] = []
        for frame in frames:
            if isinstance(frame, TTSTextFrame) or held.frames:
                held.hold(frame)
            else:
                passing.append(frame)
        if passing:
            await super()._push_sequencer_frames(passing, context_id)

    async def _release_text(self, context_id: str, upto: int | None) -> None:
        """Release held frames whose text ends at or before ``upto`` (all for ``None``)."""
        held = self._held_text.get(context_id)
        if held is None:
            return
        for frame in held.release(upto):
            if self.audio_context_available(context_id):
                await self.append_to_audio_context(context_id, frame)
            else:
                await self.push_frame(frame)

    async def _cancel_token_stream(self, context_id: str) -> None:
        self._held_text.pop(context_id, None)  # never spoken: never in the context
        stream = self._token_streams.pop(context_id, None)
        task = self._token_tasks.pop(context_id, None)
        # Cancel first: to the engine a closed stream means "text complete, speak the
        # rest", so closing before cancelling could start one more sentence.
        if task is not None and not task.done():
            await self.cancel_task(task)
        if stream is not None:
            stream.close()

    async def _cancel_token_streams(self) -> None:
        for context_id in list(self._token_tasks):
            await self._cancel_token_stream(context_id)

    # -- interruption -------------------------------------------------------------------

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Stop the engine request speaking an interrupted context (token mode).

        In sentence mode the request is already stopped: the interruption cancelled
        the task running ``run_tts`` and with it the engine's generator.
        """
        self._refused_contexts.discard(context_id)  # interrupted contexts are not counted
        await self._cancel_token_stream(context_id)

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection):
        await super()._handle_interruption(frame, direction)
        # Safety net: no stream of an interruptible context may keep the model busy.
        # Uninterruptible contexts survive the interruption and keep speaking.
        for context_id in list(self._token_tasks):
            context = self._tts_contexts.get(context_id)
            if context is None or context.interruptible:
                await self._cancel_token_stream(context_id)


async def _engine_audio(
    engine: TTSEngine, text: str | AsyncIterable[str], kwargs: dict[str, Any]
) -> AsyncIterator[tuple[bytes, int | None]]:
    """PCM chunks of one request with the start of the text span each one speaks.

    ``stream_chunks`` gives spans; an engine without it gives audio only (``None``).
    """
    if hasattr(engine, "stream_chunks"):
        async with aclosing(engine.stream_chunks(text, **kwargs)) as chunks:
            async for chunk in chunks:
                yield chunk.pcm, chunk.text_span[0] if chunk.text_span else None
    else:
        async with aclosing(engine.synthesize_streaming(text, **kwargs)) as chunks:
            async for pcm in chunks:
                yield pcm, None
