"""The knobs of one utterance, shared by the loop rules and the sampler.

Its own module because both :mod:`.sampling` (solver, steps, guidance) and
:mod:`.utterance` (latent cap, EOS handling) read it, and neither should import the other
for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationSettings:
    """Knobs of one utterance."""

    cfg_scale: float = 1.5
    inference_steps: int = 5
    #: ``sde-dpmsolver++`` (official streaming demo) or ``dpmsolver++`` (file demo).
    algorithm: str = "sde-dpmsolver++"
    #: Hard cap on latents; ``None`` uses the trailing rule (see ``utterance.TRAILING_*``).
    max_latents: int | None = None
    #: Reproduce the official loop exactly: after EOS, finish the window (not kept).
    complete_window_after_eos: bool = False
