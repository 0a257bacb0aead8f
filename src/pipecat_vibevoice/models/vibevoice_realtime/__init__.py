"""Our own VibeVoice-Realtime-0.5B: checkpoint-compatible, streaming, on transformers 5.x.

Only :mod:`.backend` is imported by the engine; the other modules need torch,
transformers and diffusers and are imported lazily so that a machine without them
still gets a clear :class:`~pipecat_vibevoice.engine.BackendUnavailable`.
"""
