"""Voice backends: the model side of the engine (blocking, one chunk per call).

* :mod:`.base` — what a backend provides (:class:`SpeechBackend`) and receives.
* :mod:`.piper` — the bundled CPU voice on a split VITS graph.
* :mod:`.vibevoice` — the adapter over :mod:`pipecat_vibevoice.models.vibevoice_realtime`.

Which one runs is decided in :mod:`pipecat_vibevoice.engine.loading`.
"""

from .base import AudioPiece, SpeechBackend, SynthesisRequest

__all__ = ["AudioPiece", "SpeechBackend", "SynthesisRequest"]
