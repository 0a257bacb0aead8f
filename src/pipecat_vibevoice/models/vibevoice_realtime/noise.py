"""Gaussian noise for the sampler, from a private generator or replayed from a recording.

Each utterance draws from its own source, in the order the official loop draws (initial
sample, then one variance draw per SDE solver step). That keeps an utterance's audio
independent of who else runs on the model or shares its batch, makes a seeded request
reproducible, and lets the parity tests replay the official run's recorded draws.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class NoiseSource(Protocol):
    """Gaussian draws for the sampler, in the order the official loop makes them."""

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 standard-normal tensor of ``shape`` on ``device``."""
        ...


class TorchNoise:
    """Draws from a private ``torch.Generator`` (seeded per utterance if asked)."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randn(
            shape, generator=self.generator, device=self.generator.device, dtype=torch.float32
        ).to(device)


class RecordedNoise:
    """Replays recorded draws (e.g. the fixture's ``noise.npy`` [N, D, 2, vae]) in order.

    The official sampler draws [2, vae] and only row 0 matters; a draw of shape
    (1, vae) returns that row.
    """

    def __init__(self, draws: np.ndarray) -> None:
        flat = np.asarray(draws, dtype=np.float32)
        self._draws = flat.reshape(-1, *flat.shape[-2:])
        self.used = 0

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.used >= len(self._draws):
            raise IndexError(f"recorded noise exhausted after {self.used} draws")
        value = torch.from_numpy(self._draws[self.used][: shape[0]].copy())
        self.used += 1
        return value.reshape(shape).to(device)
