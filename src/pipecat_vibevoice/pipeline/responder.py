"""The built-in offline responder: a rule-based stand-in for a language model.

It is **not** a language model and understands nothing. It answers the latest user
message from a few fixed patterns (greeting, time, name, goodbye) and otherwise
repeats back what it heard. It exists so the whole voice loop — VAD, recognition,
turn taking, TTS, barge-in — runs offline with no model server; point the bot at a
real model with ``--llm-url`` for actual conversation.

It speaks Pipecat's LLM protocol: it consumes :class:`LLMContextFrame` and pushes
``LLMFullResponseStartFrame`` → ``LLMTextFrame``\\ s → ``LLMFullResponseEndFrame``,
so the TTS and the assistant aggregator treat it exactly like an LLM service.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def reply_to(heard: str, now: dt.datetime | None = None) -> str:
    """The responder's answer to one user utterance (empty input → empty answer)."""
    text = " ".join(heard.split())
    if not text:
        return ""
    lowered = text.lower()
    words = set(re.findall(r"[a-z']+", lowered))
    now = now or dt.datetime.now()
    if words & {"bye", "goodbye"}:
        return "Goodbye! It was nice talking to you."
    if "time" in words and words & {"what", "what's", "tell"}:
        return f"It is {now:%H:%M} here. I read that from the clock, not from a language model."
    if "name" in words and words & {"your", "you"}:
        return "I am the offline voice demo of pipecat VibeVoice."
    if words & {"hello", "hi", "hey"} and len(words) <= 4:
        return (
            "Hello! I am the offline responder. I cannot think, but I can tell you what I "
            "heard. Try asking me the time."
        )
    return (
        f"I heard you say: {text.rstrip('.!?')}. I am the built-in offline responder, "
        "not a language model, so repeating what I heard is all I can do. Connect a "
        "language model server to get real answers."
    )


def last_user_text(messages: list[Any]) -> str:
    """Text of the latest user message in an LLM context (str or content parts)."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                part.get("text", "") for part in content if isinstance(part, dict)
            ).strip()
    return ""


class OfflineResponder(FrameProcessor):
    """Answers each user turn from :func:`reply_to`; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replies = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Answer context frames; pass everything else on."""
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        if getattr(frame, "speculation", False):
            return  # a provisional turn: nothing may reach the user
        heard = last_user_text(frame.context.get_messages())
        answer = reply_to(heard)
        if not answer:
            return
        self.replies += 1
        logger.debug(f"{self}: reply {self.replies} to {heard!r}")
        await self.push_frame(LLMFullResponseStartFrame())
        for sentence in _SENTENCE.split(answer):
            await self.push_frame(LLMTextFrame(sentence + " "))
        await self.push_frame(LLMFullResponseEndFrame())
