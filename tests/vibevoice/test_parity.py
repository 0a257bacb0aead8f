"""Numerical parity with the official implementation (fixture goldens, float32 CPU).

Every value is checked twice against a float64 run of our own implementation: our
float32 result and the official float32 golden must each lie within the bound that
float32 rounding allows for that computation (``numerics``: an error analysis run with
the test, not a tolerance read off one CPU). So the checks hold on any x86-64 kernel
level and thread count, and still catch any real difference of structure (1e-2 and up).
The EOS stop index and the kept-chunk counts are exact: the fixture's EOS head was
designed with a ±4 logit margin, far beyond any rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipecat_vibevoice.models.vibevoice_realtime.generation import (
    FixedTokens,
    GenerationSettings,
    RecordedNoise,
    generate,
    make_scheduler,
    sample_latent,
)

from .conftest import FIXTURE, load_npy
from .numerics import U32, assert_within, rounding_bound

TEXT_IDS = [1820, 44, 3071, 9, 2500, 613, 1187, 3333, 256, 4000, 78, 1450]
RUNS = {
    # run: (algorithm, latents sampled, first EOS index, chunks kept)
    "sde": ("sde-dpmsolver++", 24, 21, 22),
    "ode": ("dpmsolver++", 30, 27, 28),
}


def components(fixture_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir / "components" / f"{name}.safetensors"))


def f64(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in tensors.items()}


def check(ours, golden, reference: np.ndarray, bound: np.ndarray, what: str) -> None:
    """Ours (float32) and the official golden (float32) both within float32 rounding."""
    assert_within(ours, reference, bound, f"{what} (ours, float32)")
    assert_within(golden, reference, bound, f"{what} (official golden)")


@torch.inference_mode()
def test_connector(tiny_model, tiny_model64, fixture_dir: Path) -> None:
    c = components(fixture_dir, "connector")
    latents = f64(c)["latents"]
    (fc1_ref, out_ref), (fc1_bound, out_bound) = rounding_bound(
        tiny_model64,
        lambda: (
            tiny_model64.acoustic_connector.linear_1(latents),
            tiny_model64.connect(latents),
        ),
    )
    fc1 = tiny_model.acoustic_connector.linear_1(c["latents"])
    check(fc1, c["fc1_out"], fc1_ref, fc1_bound, "connector fc1")
    check(tiny_model.connect(c["latents"]), c["output"], out_ref, out_bound, "connector")


@torch.inference_mode()
def test_diffusion_head(tiny_model, tiny_model64, fixture_dir: Path) -> None:
    h = components(fixture_dir, "diffusion_head")
    h64 = f64(h)
    head64 = tiny_model64.prediction_head

    def compute():
        sinusoid = head64.timestep_embedding(h64["timesteps"])
        return (
            sinusoid,
            head64.timestep_proj(sinusoid),
            tiny_model64.predict(h64["noisy_latent"], h64["timesteps"], h64["condition"]),
        )

    refs, bounds = rounding_bound(tiny_model64, compute)
    # The sinusoid's bound is the analytic one: (2|t·f| + 2) u per value, times the safety
    # factor; at t = 999 that is ~2.4e-4, where one ULP of a float32 frequency is 6e-5.
    assert bounds[0].max() < 4 * (2 * 999 + 2) * U32
    head = tiny_model.prediction_head
    sinusoid = head.timestep_embedding(h["timesteps"])
    check(sinusoid, h["timestep_sinusoid_256"], refs[0], bounds[0], "timestep sinusoid")
    check(
        head.timestep_proj(sinusoid), h["timestep_embedding"], refs[1], bounds[1], "timestep proj"
    )
    out = tiny_model.predict(h["noisy_latent"], h["timesteps"], h["condition"])
    check(out, h["output"], refs[2], bounds[2], "diffusion head")


@torch.inference_mode()
def test_acoustic_decoder_batch_and_streamed(tiny_model, tiny_model64, fixture_dir: Path) -> None:
    from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (  # noqa: E501
        VibeVoiceAcousticTokenizerConv1dPaddingCache as PaddingCache,
    )

    d = components(fixture_dir, "acoustic_decoder")
    frames = d["latents"].shape[1]

    def decode(model, latents):
        decoder = model.acoustic_decoder
        full = decoder(latents.transpose(1, 2)).audio
        cache = PaddingCache()
        chunks = [
            decoder(latents[:, i : i + 1].transpose(1, 2), padding_cache=cache, use_cache=True)
            .audio[0, 0]
            for i in range(frames)
        ]
        return full, torch.stack(chunks)

    latents64 = f64(d)["latents"]
    (full_ref, streamed_ref), (full_bound, streamed_bound) = rounding_bound(
        tiny_model64, lambda: decode(tiny_model64, latents64)
    )
    full, streamed = decode(tiny_model, d["latents"])
    assert streamed.shape == (10, 3200)
    check(full, d["decoded_full"], full_ref, full_bound, "decoder, all frames at once")
    check(
        streamed, d["decoded_streamed_chunks"], streamed_ref, streamed_bound, "decoder, streamed"
    )
    # Streaming is exact in structure: in float64 the two ways agree to float64 rounding.
    np.testing.assert_allclose(streamed_ref.reshape(1, 1, -1), full_ref, atol=1e-9, rtol=0)


@torch.inference_mode()
def test_lm_hidden_states_fresh_and_on_preset(
    tiny_model, tiny_preset, tiny_model64, tiny_preset64, fixture_dir: Path
) -> None:
    from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
        SPEECH_TYPE,
        TEXT_TYPE,
    )

    c = components(fixture_dir, "lm_hidden_states")

    def compute(model, preset):
        lower = model.language_model(input_ids=c["lm_input_ids"]).last_hidden_state
        out = [lower]
        for row in (TEXT_TYPE, SPEECH_TYPE):
            embeds = lower + model.tts_input_types.weight[row]
            upper = model.tts_language_model(inputs_embeds=embeds).last_hidden_state
            out += [upper, model.eos_logit(upper)]
        # Continuation on the preset caches: the first text window of generation.
        lm_cache = preset.lm.make_cache(model.language_model.config)
        out.append(
            model.language_model(
                input_ids=c["cont_window_ids"], cache=lm_cache, use_cache=True
            ).last_hidden_state
        )
        lm_cache = preset.lm.make_cache(model.language_model.config)
        tts_cache = preset.tts_lm.make_cache(model.tts_language_model.config)
        upper = model.forward_text(c["cont_window_ids"], lm_cache, tts_cache)
        out += [upper, model.eos_logit(upper)]
        assert tts_cache.get_seq_length() == 12 + 5
        return tuple(out)

    refs, bounds = rounding_bound(tiny_model64, lambda: compute(tiny_model64, tiny_preset64))
    ours = compute(tiny_model, tiny_preset)
    goldens = [
        c["lm_last_hidden_state"],
        c["tts_text_last_hidden_state"],
        c["tts_text_eos_logit"][:, 0],
        c["tts_speechtype_last_hidden_state"],
        c["tts_speechtype_eos_logit"][:, 0],
        c["cont_lm_last_hidden_state"],
        c["cont_tts_last_hidden_state"],
        c["cont_tts_eos_logit"].reshape(-1),
    ]
    names = [
        "lower LM",
        "upper LM (text type)",
        "EOS logit (text type)",
        "upper LM (speech type)",
        "EOS logit (speech type)",
        "lower LM on the preset",
        "upper LM on the preset",
        "EOS logit on the preset",
    ]
    for got, golden, ref, bound, name in zip(ours, goldens, refs, bounds, names, strict=True):
        check(got, golden, ref, bound, name)
    # The preset itself was not modified by the continuation.
    assert tiny_preset.tts_lm.length == 12


@pytest.mark.parametrize("run", ["sde", "ode"])
@torch.inference_mode()
def test_sampler_one_latent(tiny_model, tiny_model64, fixture_dir: Path, run: str) -> None:
    s = components(fixture_dir, f"sampler_{run}")
    draws = torch.stack([s["init_noise"]] + ([*s["step_noise"]] if run == "sde" else []))
    settings = GenerationSettings(algorithm=RUNS[run][0])

    def sample(model, condition):
        noise = RecordedNoise(draws.numpy())
        scheduler = make_scheduler(model, settings)
        latent = sample_latent(model, scheduler, condition, settings, noise)
        assert noise.used == len(draws)
        return latent, scheduler

    scheduler = make_scheduler(tiny_model, settings)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == s["timesteps"].tolist()
    # Sigmas are computed by numpy in float64, then rounded to float32: a few ULPs apart.
    torch.testing.assert_close(scheduler.sigmas.float(), s["sigmas"], atol=1e-3, rtol=1e-6)
    condition64 = s["head_condition"].to(torch.float64)
    (ref,), (bound,) = rounding_bound(tiny_model64, lambda: sample(tiny_model64, condition64)[0])
    latent, _ = sample(tiny_model, s["head_condition"])
    check(latent, s["result"], ref, bound, f"sampled latent ({run})")


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


def trajectory(items: list) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
    """Latents, audio chunks, EOS logits and conditions of a generation, stacked."""
    return (
        torch.cat([i.latent for i in items]),
        np.stack([i.audio for i in items]),
        np.array([i.eos_logit for i in items]),
        torch.stack([i.condition for i in items]),
    )


@pytest.mark.parametrize("run", ["sde", "ode"])
def test_end_to_end_with_recorded_noise(
    tiny_model, tiny_preset, tiny_model64, tiny_preset64, run: str
) -> None:
    """Replaying the official noise reproduces every latent, chunk, EOS logit and the stop."""
    _, sampled, eos_at, kept = RUNS[run]
    items = run_generation(tiny_model, tiny_preset, run, complete=True)
    assert len(items) == sampled
    assert [i.kept for i in items] == [True] * kept + [False] * (sampled - kept)
    refs, bounds = rounding_bound(
        tiny_model64,
        lambda: trajectory(run_generation(tiny_model64, tiny_preset64, run, complete=True)),
    )
    goldens = [load_npy(run, n) for n in ("latents", "audio_chunks", "eos_logits", "conditions")]
    names = ["latents", "audio chunks", "EOS logits", "conditions"]
    for got, golden, ref, bound, name in zip(
        trajectory(items), goldens, refs, bounds, names, strict=True
    ):
        check(got, golden, ref, bound, f"{name} ({run})")
    # The stop is decided with the designed margin: 4 logits, far beyond the bound.
    assert bounds[2].max() < 0.5
    eos = np.array([i.eos_logit for i in items])
    assert int(np.argmax(eos > 0)) == eos_at
    # Window/text bookkeeping: 5 text tokens per window, 6 latents per window.
    assert [i.window for i in items] == [k // 6 for k in range(sampled)]
    assert items[0].tokens == (0, 5) and items[6].tokens == (5, 10) and items[12].tokens == (10, 12)
    assert items[18].tokens == (12, 12)


@pytest.mark.parametrize("run", ["sde", "ode"])
def test_default_loop_stops_at_eos_and_matches_the_wav(
    tiny_model, tiny_preset, tiny_model64, tiny_preset64, run: str
) -> None:
    """Without finishing the window, we stop right at EOS: the output equals audio.wav."""
    _, _, eos_at, kept = RUNS[run]
    items = run_generation(tiny_model, tiny_preset, run, complete=False)
    assert len(items) == kept == eos_at + 1
    (ref,), (bound,) = rounding_bound(
        tiny_model64,
        lambda: np.stack([i.audio for i in run_generation(tiny_model64, tiny_preset64, run, False)]),
    )
    official = read_float_wav(FIXTURE / f"generate_{run}" / "audio.wav")
    assert official.size == kept * 3200
    check(np.stack([i.audio for i in items]), official.reshape(kept, 3200), ref, bound, "audio.wav")
