"""TTSConfig: defaults, environment, CLI flags and validation messages."""

from __future__ import annotations

import argparse

import pytest

from pipecat_vibevoice.engine import ConfigError, TTSConfig


def test_defaults_match_the_spec() -> None:
    config = TTSConfig()
    assert config.engine == "auto"
    assert config.sample_rate == 24000
    assert config.device == "auto"
    assert config.streaming is True
    assert config.chunk_ms == 80
    assert config.gpu_memory_fraction == 0.4
    assert config.chunk_samples == 1920


def test_environment_overrides_defaults() -> None:
    env = {
        "PIPECAT_VIBEVOICE_ENGINE": "piper",
        "PIPECAT_VIBEVOICE_SAMPLE_RATE": "16000",
        "PIPECAT_VIBEVOICE_STREAMING": "off",
        "PIPECAT_VIBEVOICE_GPU_MEMORY_FRACTION": "0.25",
    }
    config = TTSConfig.from_env(env)
    assert (config.engine, config.sample_rate, config.streaming) == ("piper", 16000, False)
    assert config.gpu_memory_fraction == 0.25


def test_cli_flags_beat_environment() -> None:
    parser = argparse.ArgumentParser()
    TTSConfig.add_cli_arguments(parser)
    args = parser.parse_args(["--sample-rate", "48000", "--no-streaming", "--chunk-ms", "40"])
    config = TTSConfig.from_args(args, environ={"PIPECAT_VIBEVOICE_SAMPLE_RATE": "16000"})
    assert (config.sample_rate, config.streaming, config.chunk_ms) == (48000, False, 40)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": "espeak"}, "engine must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"sample_rate": 1000}, "sample_rate"),
        ({"chunk_ms": 0}, "chunk_ms"),
        ({"sample_rate": 22050, "chunk_ms": 7}, "chunk_ms"),
        ({"gpu_memory_fraction": 1.5}, "gpu_memory_fraction"),
        ({"load_retries": 0}, "load_retries"),
        ({"piper_windows": "24,x"}, "piper_windows"),
        ({"piper_windows": "0,48"}, "piper_windows"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TTSConfig(**kwargs)


def test_piper_windows_become_the_backends_schedule() -> None:
    from pipecat_vibevoice.engine.backends.piper import DEFAULT_SCHEDULE
    from pipecat_vibevoice.engine.loading import make_piper

    assert TTSConfig().piper_window_frames() is None
    assert make_piper(TTSConfig()).schedule == DEFAULT_SCHEDULE
    assert make_piper(TTSConfig(piper_windows="48, 96,256")).schedule == (48, 96, 256)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PIPECAT_VIBEVOICE_SAMPLE_RATE"):
        TTSConfig.from_env({"PIPECAT_VIBEVOICE_SAMPLE_RATE": "fast"})


@pytest.mark.parametrize(
    ("cores", "width", "threads"), [(2, 2, 1), (16, 4, 4), (2, 4, 1), (3, 2, 1)]
)
def test_model_calls_share_the_usable_cores(monkeypatch, cores, width, threads):
    """Workers × threads per call stay within the cores this process may use."""
    from pipecat_vibevoice.engine import workers

    monkeypatch.setattr(workers, "usable_cores", lambda: float(cores))
    assert workers.threads_per_call(width) == threads
