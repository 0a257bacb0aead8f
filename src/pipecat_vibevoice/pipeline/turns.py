"""Deciding when the user's turn is over.

Silence alone is a poor judge: people pause inside sentences. A turn ends early
(after ``vad_stop_secs``) only when it sounds finished — the transcript does not end
on a word that needs a continuation ("with", "and", "the"...) and, when enabled,
Pipecat's bundled smart-turn model agrees. Otherwise it ends after
``max_pause_secs`` of silence. The recognizer applies this rule and marks the one
transcript of the turn ``finalized``; :class:`FinalTranscriptTurnStopStrategy`
turns that mark into Pipecat's end of turn.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pipecat.frames.frames import Frame, TranscriptionFrame
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

#: Last words after which an English sentence almost never ends.
CONTINUATION_WORDS = frozenset(
    """
    a an the and but or nor so because if then than that which who whose whom when while
    where as of to in on at by for from with without into onto about like my your his her
    its our their this these those is are was were am be been being i we you he she they
    it's i'm um uh er erm hmm can could would should will shall may might must do does did
    not very really just also maybe let's please
    """.split()
)

_WORD = re.compile(r"[a-z']+")
_SMART_TURN_SECONDS = 8
_SMART_TURN_RATE = 16000


def text_sounds_finished(text: str) -> bool:
    """False for transcripts that end mid-sentence ("I'd like a pizza with")."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "\u2026", ",", "-", ":", ";")):
        return False
    words = _WORD.findall(stripped.lower())
    if not words:
        return False
    # "please" ends plenty of requests; only count it as unfinished mid-sentence.
    if words[-1] == "please" and stripped[-1] in ".!?":
        return True
    return words[-1] not in CONTINUATION_WORDS


def smart_turn_probability(session: Any, audio: np.ndarray) -> float:
    """Probability that ``audio`` (16 kHz float32, ending now) is a finished turn.

    Runs Pipecat's bundled smart-turn v3 ONNX model on the last 8 s, as its local
    analyzer does; ~25 ms on one core.
    """
    from pipecat.audio.turn.smart_turn._whisper_features import (
        compute_whisper_log_mel_features,
    )

    n = _SMART_TURN_SECONDS * _SMART_TURN_RATE
    clip = audio[-n:] if len(audio) > n else np.pad(audio, (n - len(audio), 0))
    features = compute_whisper_log_mel_features(clip.astype(np.float32), do_normalize=True)
    out = session.run(None, {"input_features": np.expand_dims(features, 0)})
    return float(np.asarray(out[0]).reshape(-1)[0])


class FinalTranscriptTurnStopStrategy(BaseUserTurnStopStrategy):
    """End the user turn when the recognizer sends its ``finalized`` transcript.

    The recognizer has already waited for the right silence (see module docs), so
    there is nothing left to wait for: the aggregator adds the text to the context
    and runs the LLM at once.
    """

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Trigger the end of the turn on a finalized transcript."""
        if isinstance(frame, TranscriptionFrame) and frame.finalized and frame.text.strip():
            await self.trigger_user_turn_stopped()
        return ProcessFrameResult.CONTINUE
