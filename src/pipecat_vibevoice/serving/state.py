"""What every connection of one TTS serving app shares: engine, cache, store, metrics, slots.

One :class:`ServingState` per router. Every connection uses the one engine it holds
(:func:`~pipecat_vibevoice.engine.get_tts_engine`, or the engine the host app already
loaded), so concurrent clients never load a second model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

from ..engine import TTSConfig, TTSEngine, get_tts_engine
from ..engine.scheduling import install_deadline_executor
from ..web_access import AccessPolicy
from .cache import ResponseCache
from .limits import SlotPool
from .metrics import ServingMetrics
from .settings import ServingSettings
from .store import NullStore, SynthesisStore, open_store


class ServingState:
    """Shared by every ``/v1/tts/stream`` connection of one app."""

    def __init__(
        self,
        settings: ServingSettings,
        tts_config: TTSConfig | None = None,
        engine: TTSEngine | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self.settings = settings
        #: Who may connect: the host app's policy (the bot's), else same-host browsers
        #: and non-browser clients, with the serving token.
        self.access = access or AccessPolicy(token=settings.token)
        self.tts_config = tts_config
        self._engine = engine
        self._engine_lock = asyncio.Lock()
        self.cache = ResponseCache(
            settings.cache_max_bytes,
            settings.cache_max_text_chars,
            settings.cache_dir or None,
            settings.cache_disk_max_bytes,
        )
        self.metrics = ServingMetrics(cache_ratio=self._hit_ratio)
        self.store: SynthesisStore = NullStore()
        self.syntheses = SlotPool(settings.max_active_syntheses)
        self.connections = SlotPool(settings.max_connections)
        self.started = False

    def _hit_ratio(self) -> float:
        total = self.cache.hits + self.cache.misses
        return self.cache.hits / total if total else 0.0

    async def start(self, app_state: Any = None, warm: bool = True) -> None:
        """Open the store; load (or adopt) the engine so the first client does not wait."""
        if self.started:
            return
        self.store = open_store(self.settings.store_url, self.settings.store_queue)
        self.started = True
        logger.info(
            f"TTS serving ready: store={self.store.health().get('kind')} "
            f"cache={self.settings.cache_max_bytes // (1024 * 1024)}MiB "
            f"max_active={self.settings.max_active_syntheses} "
            f"auth={'on' if self.settings.token else 'off'}"
        )
        if warm:
            await self.engine(app_state)

    async def close(self) -> None:
        """Flush and close the store."""
        if self.started:
            await asyncio.to_thread(self.cache.close)
            await self.store.close()
            self.started = False

    @property
    def loaded_engine(self) -> TTSEngine | None:
        """The shared engine once :meth:`engine` has loaded or adopted it, else None."""
        return self._engine

    async def engine(self, app_state: Any = None) -> TTSEngine:
        """The shared engine: the host app's if it has one, else the process-wide one."""
        if self._engine is not None:
            return self._engine
        async with self._engine_lock:
            if self._engine is None:
                adopted = getattr(app_state, "engine", None) if app_state is not None else None
                if isinstance(adopted, TTSEngine):
                    await adopted.initialize()
                    self._engine = adopted
                else:
                    config = self.tts_config
                    if config is None and app_state is not None:
                        config = getattr(getattr(app_state, "settings", None), "tts", None)
                    self._engine = await get_tts_engine(config)
                if self.settings.edf:
                    pool = install_deadline_executor(
                        self._engine,
                        self.settings.engine_workers,
                        self.settings.dry_guard_ms / 1000,
                    )
                    if pool is not None:
                        self.metrics.engine_queued.set_function(lambda: pool.queued)
        return self._engine

    def engine_width(self, engine: TTSEngine) -> int:
        """Model calls the engine runs at once (its pool's workers)."""
        return engine.workers

    def identity(self, engine: TTSEngine) -> dict[str, Any]:
        """What, beyond the request, decides the audio (part of every cache key)."""
        described = {}
        try:
            described = engine.backend.describe()
        except Exception:  # describe() is informative only
            described = {}
        return {
            "engine": engine.backend.name,
            "model": str(described.get("model", "")),
            "sample_rate": engine.config.sample_rate,
            "chunk_ms": engine.config.chunk_ms,
            "streaming": engine.config.streaming,
        }

    def health(self) -> dict[str, Any]:
        """Serving state for ``/health``: sessions, slots, cache and store."""
        health: dict[str, Any] = {"replica": self.settings.replica} if self.settings.replica else {}
        return health | {
            "status": "ok" if self.started else "stopped",
            "sessions": self.connections.in_use,
            "max_connections": self.settings.max_connections,
            "active_syntheses": self.syntheses.in_use,
            "max_active_syntheses": self.settings.max_active_syntheses,
            "cache": self.cache.stats(),
            "store": self.store.health(),
        }
