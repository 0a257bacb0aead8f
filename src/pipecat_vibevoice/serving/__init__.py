"""TTS serving API: the engine behind ``WS /v1/tts/stream`` for many clients.

Protocol, per-connection queues, response cache, synthesis store, Prometheus metrics,
limits and auth. Include :func:`create_tts_router` in any FastAPI app, or run the
standalone server with ``python -m pipecat_vibevoice.serving``. docs/serving.md is
the reference.
"""

from .cache import ResponseCache
from .router import create_tts_router, serving_health
from .settings import ServingSettings
from .store import SQLiteStore, SynthesisRecord, SynthesisStore, open_store

__all__ = [
    "ResponseCache",
    "SQLiteStore",
    "ServingSettings",
    "SynthesisRecord",
    "SynthesisStore",
    "create_tts_router",
    "open_store",
    "serving_health",
]
