"""Voice backends: the model side of the engine (blocking, one chunk per call).

* :mod:`.base` — what a backend provides (:class:`SpeechBackend`) and receives.
* :mod:`.piper` — the bundled CPU voice on a split VITS graph.
* :mod:`.vibevoice` — the adapter over :mod:`pipecat_vibevoice.models.vibevoice_realtime`.
* :mod:`.vibevoice_1p5b` — transformers' VibeVoice-1.5B (voices from reference audio),
  over :mod:`pipecat_vibevoice.models.vibevoice_1p5b`; only by name (``engine="vibevoice-1.5b"``).

Which one runs is decided in :mod:`pipecat_vibevoice.engine.loading`.
"""

from .base import AudioPiece, SpeechBackend, SynthesisRequest

__all__ = ["AudioPiece", "SpeechBackend", "SynthesisRequest"]
