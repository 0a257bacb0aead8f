"""pipecat-vibevoice: a real-time voice bot stack on Pipecat."""

__version__ = "0.1.0"
