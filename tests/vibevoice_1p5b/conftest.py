"""Fixtures: one tiny random VibeVoice-1.5B checkpoint per session, engines on it, clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers.models.vibevoice")

from .tiny_model import SAMPLE_RATE, build_tiny_checkpoint  # noqa: E402

#: Few diffusion steps: the tests check the loop, not the sound.
STEPS = 3


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("vibevoice-1.5b-tiny"))


def speech_like(seconds: float, rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A voiced-sounding clip: a 140 Hz buzz with a few harmonics, syllable-rate envelope."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    f0 = 110 + 60 * rng.random()
    buzz = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * buzz * envelope).astype(np.float32)


@pytest.fixture
def clip() -> np.ndarray:
    return speech_like(3.0)


def engine_config(checkpoint: Path, **overrides):
    from pipecat_vibevoice.engine import TTSConfig

    values = dict(
        engine="vibevoice-1.5b",
        model_path=str(checkpoint),
        device="cpu",
        inference_steps=STEPS,
        load_retries=1,
    )
    values.update(overrides)
    return TTSConfig(**values)
