"""The prompt of one utterance, as transformers' processor writes it.

The ids come from ``processor.apply_chat_template`` on a one-speaker conversation (the
text, and the voice's clip when there is one), with ``sanitize_control_tokens`` so that
text from a client is tokenised as plain text: it can neither write the audio
placeholders nor open or close speech. The processor counts a clip's placeholders from
its length alone; a silent stand-in of the voice's length gets the same ids without
keeping the clip (:class:`~.voice.VoicePrompt` holds no audio).

The embeddings are the language model's token embeddings with the voice's rows where
the placeholders are, exactly what ``VibeVoiceModel.forward`` builds from ``input_values``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .voice import VoicePrompt

__all__ = ["SPEAKER", "prompt_embeddings", "prompt_ids"]

#: The one speaker of every utterance (the chat template's role).
SPEAKER = "0"


def conversation(text: str, clip: np.ndarray | None) -> list[dict[str, Any]]:
    """The chat-template conversation of one utterance (one speaker)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": " ".join(text.split())}]
    if clip is not None:
        content.append({"type": "audio", "audio": clip})
    return [{"role": SPEAKER, "content": content}]


def prompt_ids(processor: Any, text: str, voice: VoicePrompt | None, hop: int) -> torch.Tensor:
    """Token ids ``[1, T]`` of the prompt for ``text`` in ``voice`` (``None``: no reference)."""
    stand_in = None if voice is None else np.zeros(voice.tokens * hop, dtype=np.float32)
    inputs = processor.apply_chat_template(
        conversation(text, stand_in),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        sanitize_control_tokens=True,
    )
    return inputs["input_ids"]


@torch.inference_mode()
def prompt_embeddings(
    model: Any, input_ids: torch.Tensor, voice_rows: torch.Tensor | None
) -> torch.Tensor:
    """``[1, T, hidden]``: token embeddings, the voice's rows at the audio placeholders."""
    embed = model.get_input_embeddings()
    ids = input_ids.to(embed.weight.device)
    embeds = embed(ids)
    placeholders = ids == model.config.audio_token_id
    count = int(placeholders.sum())
    rows = 0 if voice_rows is None else int(voice_rows.shape[0])
    if count != rows:
        raise ValueError(f"the prompt has {count} audio placeholders for {rows} voice rows")
    if rows:
        mask = placeholders.unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, voice_rows.to(embeds.device, embeds.dtype))
    return embeds
