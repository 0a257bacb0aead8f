"""Our prompt and our per-latent stream against transformers' own processor and ``generate``.

Both run in float64 on the same tiny checkpoint. Our prompt must be the processor's for
the same clip (ids, and the embeddings ``VibeVoiceModel`` builds from its ``input_values``),
and our streamed latents, joined, must be ``generate``'s audio for the same seed: we draw
the same noise in the same order from a private generator where ``generate`` draws from
torch's global one after ``torch.manual_seed``.

Tolerance: both sides run the same float64 operations on the same values; the only
difference is how attention is masked (``generate`` passes an all-ones mask), which can
change the rounding of a sum, about 1e-16 relative per operation. Over the few hundred
sequential operations of a short utterance that stays below 1e-12 of the audio's scale
(RMS 0.1); any real mismatch (another voice, noise drawn elsewhere, a step out of order)
moves the audio by about its own size (see the voice test in test_engine). The backend
hands audio over as float32 (the engine's contract), which adds half a float32 step at
the audio's peak, 2**-24 of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipecat_vibevoice.engine import TTSEngine
from pipecat_vibevoice.engine.backends.base import SynthesisRequest
from pipecat_vibevoice.engine.backends.vibevoice_1p5b import UNPROMPTED
from pipecat_vibevoice.models.vibevoice_1p5b.prompt import prompt_embeddings, prompt_ids
from pipecat_vibevoice.models.vibevoice_1p5b.voice import voice_embeddings
from pipecat_vibevoice.models.vibevoice_realtime.noise import TorchNoise

from .conftest import STEPS, engine_config, speech_like
from .tiny_model import AUDIO_TOKEN, HOP, SAMPLE_RATE

TEXT = "Hello there, <|vision_pad|> friend."  # a placeholder in the text must stay text
CFG = 1.7
ATOL = 1e-12


@pytest.fixture
async def backend(tiny_checkpoint: Path):
    engine = TTSEngine(engine_config(tiny_checkpoint, dtype="float64", cfg_scale=CFG))
    await engine.initialize()
    # 2.3 s: not a whole number of latents, so the processor pads the clip
    await engine.add_voice("ref", speech_like(2.3, seed=4), SAMPLE_RATE)
    yield engine.backend
    await engine.cleanup()


def processor_inputs(backend, clip: np.ndarray | None) -> dict[str, torch.Tensor]:
    content = [{"type": "text", "text": TEXT}]
    if clip is not None:
        content.append({"type": "audio", "audio": clip})
    inputs = backend.checkpoint.processor.apply_chat_template(
        [{"role": "0", "content": content}],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        sanitize_control_tokens=True,
    )
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


async def test_a_voice_changes_the_prompt_exactly_as_the_processor_does(backend) -> None:
    ckpt = backend.checkpoint
    model, processor = ckpt.model, ckpt.processor
    clip = speech_like(2.3, seed=4)
    reference = processor_inputs(backend, clip)
    voice = backend._voice("ref")
    ids = prompt_ids(processor, TEXT, voice, HOP)
    torch.testing.assert_close(ids, reference["input_ids"], rtol=0, atol=0)
    audio_id = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    assert int((ids == audio_id).sum()) == voice.tokens == int(np.ceil(clip.size / HOP))
    # The embeddings VibeVoiceModel.forward builds from the processor's input_values.
    torch.manual_seed(11)
    features = model.model.get_audio_features(
        reference["input_values"], reference["padding_mask"], sample=True
    ).pooler_output
    embeds = model.get_input_embeddings()(reference["input_ids"])
    mask = model.model.get_placeholder_mask(reference["input_ids"], embeds, features)
    expected = embeds.masked_scatter(mask, features)
    ours = prompt_embeddings(model, ids, voice_embeddings(model, voice, TorchNoise(11)))
    torch.testing.assert_close(ours, expected, rtol=0, atol=ATOL)
    # Without a voice: the processor's prompt without the voice section.
    plain = prompt_ids(processor, TEXT, None, HOP)
    torch.testing.assert_close(plain, processor_inputs(backend, None)["input_ids"], rtol=0, atol=0)
    assert int((plain == audio_id).sum()) == 0


@pytest.mark.parametrize("voice", ["ref", UNPROMPTED])
async def test_streamed_latents_equal_transformers_generate(backend, voice: str) -> None:
    latents, seed = 4, 21
    request = SynthesisRequest(
        text=TEXT, voice=voice, options={"seed": seed, "max_latents": latents}
    )
    pieces = [piece.audio for piece in backend.stream(request) if piece.audio.size]
    assert [p.size for p in pieces] == [HOP] * latents  # one piece per latent, as it is made
    ours = np.concatenate(pieces)
    clip = speech_like(2.3, seed=4) if voice == "ref" else None
    torch.manual_seed(seed)
    (theirs,) = backend.checkpoint.model.generate(
        **processor_inputs(backend, clip),
        max_new_tokens=latents,
        guidance_scale=CFG,
        num_diffusion_steps=STEPS,
    )
    theirs = theirs[0].numpy()
    assert theirs.shape == ours.shape and float(np.std(theirs)) > 0.01
    float32_step = float(np.abs(theirs).max()) * 2.0**-24
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL + float32_step)
