"""Model implementations in the transformers style: configuration apart from modeling.

Nothing here knows the engine: :mod:`pipecat_vibevoice.engine.backends` adapts these
models to the engine's backend interface.
"""
