"""Batched model steps equal the per-utterance ones (ragged LM step, sampling, listen).

Both paths run the float64 model: in exact arithmetic they are the same computation, so
they must agree to float64 rounding (``numerics.float64_agreement``), on any CPU.
"""

from __future__ import annotations

import pytest
import torch

from pipecat_vibevoice.models.vibevoice_realtime.batching import (
    cache_lengths,
    listen_batch,
    ragged_lm_step,
    sample_latents,
)
from pipecat_vibevoice.models.vibevoice_realtime.generation import (
    FixedTokens,
    GenerationSettings,
    TorchNoise,
    make_scheduler,
    sample_latent,
)
from pipecat_vibevoice.models.vibevoice_realtime.presets import PresetBranch, VoicePreset
from pipecat_vibevoice.models.vibevoice_realtime.utterance import Utterance

from .numerics import assert_agree

#: Text windows read before the step, per utterance: the caches end up ragged.
WINDOWS = ([], [[5, 9, 12]], [[7, 3, 2, 1, 8], [44, 45]])


def short_voice(preset: VoicePreset, keep: int = 8) -> VoicePreset:
    """The fixture voice with its upper-LM prompt cut to ``keep`` positions (a "new" voice)."""
    tts = preset.tts_lm
    cut = PresetBranch(
        tts.last_hidden_state[:, :keep],
        [k[:, :, :keep] for k in tts.keys],
        [v[:, :, :keep] for v in tts.values],
    )
    return VoicePreset("short", preset.lm, cut, preset.neg_lm, preset.neg_tts_lm)


def make_states(model, presets, windows=WINDOWS) -> list[Utterance]:
    states = []
    for preset, texts in zip(presets, windows, strict=True):
        state = Utterance(model, preset, FixedTokens([]), GenerationSettings())
        for ids in texts:
            state.read_text(ids)
        states.append(state)
    return states


def layer_tensors(cache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


@pytest.fixture(scope="module")
def presets(tiny_preset64):
    return [tiny_preset64, short_voice(tiny_preset64), tiny_preset64]


@torch.inference_mode()
def test_ragged_step_equals_forward_speech_per_sequence(tiny_model64, presets) -> None:
    reference = make_states(tiny_model64, presets)
    batched = make_states(tiny_model64, presets)
    lengths = cache_lengths([s.tts_cache for s in batched])
    assert len(set(lengths)) == 3, lengths  # really ragged
    torch.manual_seed(3)
    embeds = torch.randn(3, 1, tiny_model64.config.hidden_size, dtype=torch.float64)
    expected = [
        tiny_model64.forward_speech(embeds[i : i + 1], s.tts_cache) for i, s in enumerate(reference)
    ]
    speech = embeds + tiny_model64.tts_input_types.weight[0]
    got = ragged_lm_step(tiny_model64.tts_language_model, speech, [s.tts_cache for s in batched])
    assert got.shape == (3, 1, tiny_model64.config.hidden_size)
    assert_agree(got, torch.cat(expected))
    for ref, new in zip(reference, batched, strict=True):
        assert new.tts_cache.get_seq_length() == ref.tts_cache.get_seq_length()
        for a, b in zip(layer_tensors(ref.tts_cache), layer_tensors(new.tts_cache), strict=True):
            assert_agree(b, a)
    assert cache_lengths([s.tts_cache for s in batched]) == [n + 1 for n in lengths]


@torch.inference_mode()
def test_ragged_step_keeps_matching_over_several_steps(tiny_model64, presets) -> None:
    """Positions advance per row: a second and third step still match (RoPE per row)."""
    reference = make_states(tiny_model64, presets)
    batched = make_states(tiny_model64, presets)
    torch.manual_seed(4)
    for _ in range(3):
        embeds = torch.randn(3, 1, tiny_model64.config.hidden_size, dtype=torch.float64)
        expected = torch.cat(
            [
                tiny_model64.forward_speech(embeds[i : i + 1], s.tts_cache)
                for i, s in enumerate(reference)
            ]
        )
        speech = embeds + tiny_model64.tts_input_types.weight[0]
        got = ragged_lm_step(tiny_model64.tts_language_model, speech, [s.tts_cache for s in batched])
        assert_agree(got, expected)


def test_ragged_step_rejects_mismatched_rows(tiny_model64, presets) -> None:
    states = make_states(tiny_model64, presets)
    with pytest.raises(ValueError, match="N caches"):
        ragged_lm_step(
            tiny_model64.tts_language_model,
            torch.zeros(2, 1, tiny_model64.config.hidden_size),
            [s.tts_cache for s in states],
        )


@pytest.mark.parametrize("algorithm", ["sde-dpmsolver++", "dpmsolver++"])
@torch.inference_mode()
def test_batched_sampling_equals_single_sampling(tiny_model64, algorithm) -> None:
    torch.manual_seed(5)
    hidden = tiny_model64.config.hidden_size
    positive = torch.randn(3, hidden, dtype=torch.float64)
    negative = torch.randn(3, hidden, dtype=torch.float64)
    scales = [1.5, 2.5, 1.0]
    seeds = [11, 12, 13]
    single = []
    for i in range(3):
        settings = GenerationSettings(cfg_scale=scales[i], inference_steps=4, algorithm=algorithm)
        condition = torch.stack([positive[i], negative[i]])
        scheduler = make_scheduler(tiny_model64, settings)
        single.append(
            sample_latent(tiny_model64, scheduler, condition, settings, TorchNoise(seeds[i]))
        )
    settings = GenerationSettings(inference_steps=4, algorithm=algorithm)
    scheduler = make_scheduler(tiny_model64, settings)
    noises = [TorchNoise(s) for s in seeds]
    got = sample_latents(tiny_model64, scheduler, positive, negative, scales, 4, algorithm, noises)
    assert_agree(got, torch.cat(single))
    # Each utterance's generator advanced exactly as in the single path.
    follow = [TorchNoise(s) for s in seeds]
    draws = 1 + (4 if algorithm.startswith("sde") else 0)
    for noise in follow:
        for _ in range(draws):
            noise.draw((1, tiny_model64.config.acoustic_vae_dim), tiny_model64.device)
    for a, b in zip(noises, follow, strict=True):
        assert torch.equal(a.draw((1, 8), tiny_model64.device), b.draw((1, 8), tiny_model64.device))


@torch.inference_mode()
def test_listen_batch_equals_listen_per_utterance(tiny_model64, presets) -> None:
    reference = make_states(tiny_model64, presets)
    batched = make_states(tiny_model64, presets)
    torch.manual_seed(6)
    latents = torch.randn(3, tiny_model64.config.acoustic_vae_dim, dtype=torch.float64)
    eos_expected = [s.listen(latents[i : i + 1]) for i, s in enumerate(reference)]
    positive, negative, eos = listen_batch(
        tiny_model64, latents, [s.tts_cache for s in batched], [s.neg_cache for s in batched]
    )
    assert_agree(positive, torch.cat([s.positive for s in reference]))
    assert_agree(negative, torch.cat([s.negative for s in reference]))
    assert_agree(eos, torch.tensor(eos_expected))
    for ref, new in zip(reference, batched, strict=True):
        for cache in ("tts_cache", "neg_cache"):
            a, b = getattr(ref, cache), getattr(new, cache)
            assert a.get_seq_length() == b.get_seq_length()
            for x, y in zip(layer_tensors(a), layer_tensors(b), strict=True):
                assert_agree(y, x)
