"""Numerical parity with the official implementation (fixture goldens, float32 CPU).

Tolerances are those the fixture README suggests for a re-implementation: components
atol 1e-5; generation latents/audio atol 5e-4; EOS logits atol 5e-3, with the designed
±4 margin deciding the stop step. What we actually reach is far tighter (see
docs/vibevoice.md): latents and EOS logits bit-exact, audio ≤ 5e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipecat_vibevoice.engine.vibevoice.generation import (
    FixedTokens,
    GenerationSettings,
    RecordedNoise,
    generate,
    make_scheduler,
    sample_latent,
)

from .conftest import FIXTURE, load_npy

COMPONENT_ATOL = 1e-5
GEN_ATOL = 5e-4
EOS_ATOL = 5e-3
TEXT_IDS = [1820, 44, 3071, 9, 2500, 613, 1187, 3333, 256, 4000, 78, 1450]
RUNS = {
    # run: (algorithm, latents sampled, first EOS index, chunks kept)
    "sde": ("sde-dpmsolver++", 24, 21, 22),
    "ode": ("dpmsolver++", 30, 27, 28),
}


def components(fixture_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir / "components" / f"{name}.safetensors"))


@torch.inference_mode()
def test_connector(tiny_model, fixture_dir: Path) -> None:
    c = components(fixture_dir, "connector")
    fc1 = tiny_model.acoustic_connector.linear_1(c["latents"])
    torch.testing.assert_close(fc1, c["fc1_out"], atol=COMPONENT_ATOL, rtol=0)
    torch.testing.assert_close(
        tiny_model.connect(c["latents"]), c["output"], atol=COMPONENT_ATOL, rtol=0
    )


@torch.inference_mode()
def test_diffusion_head(tiny_model, fixture_dir: Path) -> None:
    h = components(fixture_dir, "diffusion_head")
    head = tiny_model.prediction_head
    sinusoid = head.timestep_embedding(h["timesteps"])
    torch.testing.assert_close(sinusoid, h["timestep_sinusoid_256"], atol=COMPONENT_ATOL, rtol=0)
    torch.testing.assert_close(
        head.timestep_proj(sinusoid), h["timestep_embedding"], atol=COMPONENT_ATOL, rtol=0
    )
    out = tiny_model.predict(h["noisy_latent"], h["timesteps"], h["condition"])
    torch.testing.assert_close(out, h["output"], atol=COMPONENT_ATOL, rtol=0)


@torch.inference_mode()
def test_acoustic_decoder_batch_and_streamed(tiny_model, fixture_dir: Path) -> None:
    from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (  # noqa: E501
        VibeVoiceAcousticTokenizerConv1dPaddingCache,
    )

    d = components(fixture_dir, "acoustic_decoder")
    decoder = tiny_model.acoustic_decoder
    full = decoder(d["latents"].transpose(1, 2)).audio
    torch.testing.assert_close(full, d["decoded_full"], atol=COMPONENT_ATOL, rtol=0)
    cache = VibeVoiceAcousticTokenizerConv1dPaddingCache()
    chunks = [
        decoder(
            d["latents"][:, i : i + 1].transpose(1, 2), padding_cache=cache, use_cache=True
        ).audio[0, 0]
        for i in range(d["latents"].shape[1])
    ]
    streamed = torch.stack(chunks)
    assert streamed.shape == (10, 3200)
    torch.testing.assert_close(streamed, d["decoded_streamed_chunks"], atol=COMPONENT_ATOL, rtol=0)
    torch.testing.assert_close(streamed.reshape(1, 1, -1), full, atol=COMPONENT_ATOL, rtol=0)


@torch.inference_mode()
def test_lm_hidden_states_fresh_and_on_preset(tiny_model, tiny_preset, fixture_dir: Path) -> None:
    from pipecat_vibevoice.engine.vibevoice.modeling_vibevoice_realtime import (
        SPEECH_TYPE,
        TEXT_TYPE,
    )

    c = components(fixture_dir, "lm_hidden_states")
    lower = tiny_model.language_model(input_ids=c["lm_input_ids"]).last_hidden_state
    torch.testing.assert_close(lower, c["lm_last_hidden_state"], atol=COMPONENT_ATOL, rtol=0)
    for kind, row in (("text", TEXT_TYPE), ("speechtype", SPEECH_TYPE)):
        embeds = lower + tiny_model.tts_input_types.weight[row]
        upper = tiny_model.tts_language_model(inputs_embeds=embeds).last_hidden_state
        torch.testing.assert_close(
            upper, c[f"tts_{kind}_last_hidden_state"], atol=COMPONENT_ATOL, rtol=0
        )
        torch.testing.assert_close(
            tiny_model.eos_logit(upper),
            c[f"tts_{kind}_eos_logit"][:, 0],
            atol=COMPONENT_ATOL,
            rtol=0,
        )
    # Continuation on the preset caches: the first text window of generation.
    lm_cache = tiny_preset.lm.make_cache(tiny_model.language_model.config)
    tts_cache = tiny_preset.tts_lm.make_cache(tiny_model.tts_language_model.config)
    lower = tiny_model.language_model(
        input_ids=c["cont_window_ids"], cache=lm_cache, use_cache=True
    )
    torch.testing.assert_close(
        lower.last_hidden_state, c["cont_lm_last_hidden_state"], atol=COMPONENT_ATOL, rtol=0
    )
    lm_cache = tiny_preset.lm.make_cache(tiny_model.language_model.config)
    upper = tiny_model.forward_text(c["cont_window_ids"], lm_cache, tts_cache)
    torch.testing.assert_close(upper, c["cont_tts_last_hidden_state"], atol=COMPONENT_ATOL, rtol=0)
    torch.testing.assert_close(
        tiny_model.eos_logit(upper),
        c["cont_tts_eos_logit"].reshape(-1),
        atol=COMPONENT_ATOL,
        rtol=0,
    )
    assert tts_cache.get_seq_length() == 12 + 5
    # The preset itself was not modified by the continuation.
    assert tiny_preset.tts_lm.length == 12


@pytest.mark.parametrize("run", ["sde", "ode"])
@torch.inference_mode()
def test_sampler_one_latent(tiny_model, fixture_dir: Path, run: str) -> None:
    s = components(fixture_dir, f"sampler_{run}")
    draws = [s["init_noise"]] + ([*s["step_noise"]] if run == "sde" else [])
    noise = RecordedNoise(torch.stack(draws).numpy())
    settings = GenerationSettings(algorithm=RUNS[run][0])
    scheduler = make_scheduler(tiny_model, settings)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == s["timesteps"].tolist()
    torch.testing.assert_close(scheduler.sigmas.float(), s["sigmas"], atol=1e-3, rtol=1e-6)
    condition = s["head_condition"]
    latent = sample_latent(tiny_model, scheduler, condition, settings, noise)
    torch.testing.assert_close(latent, s["result"], atol=COMPONENT_ATOL, rtol=0)
    assert noise.used == len(draws)


def read_float_wav(path: Path) -> np.ndarray:
    """Samples of a mono 24 kHz 32-bit float WAV (the stdlib ``wave`` reads PCM only)."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if tag == b"fmt ":
            fmt = (int.from_bytes(body[0:2], "little"), int.from_bytes(body[4:8], "little"))
        elif tag == b"data":
            samples = np.frombuffer(body, dtype="<f4")
        pos += 8 + size + (size & 1)
    assert fmt is not None and fmt[1] == 24000 and fmt[0] in (3, 0xFFFE)
    assert samples is not None
    return samples


def run_generation(model, preset, run: str, complete: bool) -> list:
    algorithm = RUNS[run][0]
    noise = RecordedNoise(load_npy(run, "noise"))
    settings = GenerationSettings(algorithm=algorithm, complete_window_after_eos=complete)
    return list(generate(model, preset, FixedTokens(TEXT_IDS), settings, noise))


@pytest.mark.parametrize("run", ["sde", "ode"])
def test_end_to_end_with_recorded_noise(tiny_model, tiny_preset, run: str) -> None:
    """Replaying the official noise reproduces every latent, chunk, EOS logit and the stop."""
    _, sampled, eos_at, kept = RUNS[run]
    items = run_generation(tiny_model, tiny_preset, run, complete=True)
    assert len(items) == sampled
    assert [i.kept for i in items] == [True] * kept + [False] * (sampled - kept)
    latents = torch.cat([i.latent for i in items]).numpy()
    audio = np.stack([i.audio for i in items])
    eos = np.array([i.eos_logit for i in items], dtype=np.float32)
    np.testing.assert_allclose(latents, load_npy(run, "latents"), atol=GEN_ATOL, rtol=0)
    np.testing.assert_allclose(audio, load_npy(run, "audio_chunks"), atol=GEN_ATOL, rtol=0)
    np.testing.assert_allclose(eos, load_npy(run, "eos_logits"), atol=EOS_ATOL, rtol=0)
    conditions = torch.stack([i.condition for i in items]).numpy()
    np.testing.assert_allclose(conditions, load_npy(run, "conditions"), atol=GEN_ATOL, rtol=0)
    assert int(np.argmax(eos > 0)) == eos_at
    # Window/text bookkeeping: 5 text tokens per window, 6 latents per window.
    assert [i.window for i in items] == [k // 6 for k in range(sampled)]
    assert items[0].tokens == (0, 5) and items[6].tokens == (5, 10) and items[12].tokens == (10, 12)
    assert items[18].tokens == (12, 12)


@pytest.mark.parametrize("run", ["sde", "ode"])
def test_default_loop_stops_at_eos_and_matches_the_wav(tiny_model, tiny_preset, run: str) -> None:
    """Without finishing the window, we stop right at EOS: the output equals audio.wav."""
    _, _, eos_at, kept = RUNS[run]
    items = run_generation(tiny_model, tiny_preset, run, complete=False)
    assert len(items) == kept == eos_at + 1
    ours = np.concatenate([i.audio for i in items])
    official = read_float_wav(FIXTURE / f"generate_{run}" / "audio.wav")
    assert official.size == ours.size == kept * 3200
    np.testing.assert_allclose(ours, official, atol=GEN_ATOL, rtol=0)
