"""The TTS pool on Ray Serve: ``/v1/tts/stream``, ``/health`` and ``/metrics`` per replica.

``serve run deploy/ray/serve.yaml`` (Ray's own CLI) starts :func:`build_app`: one Serve
deployment whose every replica is the standalone TTS server of
:mod:`pipecat_vibevoice.serving.app` — the same FastAPI app, routes and protocol code,
built on the replica (``__serve_build_asgi_app__``) and mounted as the deployment's
ingress. Serve's HTTP proxy carries the websocket to one replica for the socket's whole
life, so every utterance of a connection is spoken by the replica that accepted it;
new connections go to live replicas (Serve's router), and Serve replaces a replica that
dies or fails :meth:`TTSPool.check_health`.

Each replica holds one engine (the process-wide one of ``get_tts_engine``), configured
as the plain server is: ``TTSConfig`` and ``ServingSettings`` from the replica's
environment (``PIPECAT_VIBEVOICE_*``, set through the YAML's ``runtime_env``) with the
builder's ``tts``/``serving`` arguments on top. The replica's name is its Serve replica
id (``serve.get_replica_context().replica_id.unique_id``): it goes into
``ServingSettings.replica``, so every ``started`` event, the ``/health`` answer and the
store rows say which replica spoke.

What the routes answer through the proxy:

* ``/health``: this replica's own health (engine, sessions, store), plus ``pool``, the
  Serve controller's view of the deployment (its status and how many replicas are in
  each state; the controller probes every replica's ``check_health``), read with
  ``serve.status()``. ``degraded`` when the pool is not healthy. The ``X-TTS-Replica``
  header names the replica that answered.
* ``/metrics``: the answering replica's own Prometheus registry (per replica, not
  summed; ``X-TTS-Replica`` says whose). For the pool as a whole, scrape each replica
  (Kubernetes) or Ray's own metrics export, which labels Serve's request metrics by
  replica.

The store: every replica opens ``store_url`` itself. Replicas on one host share the
default SQLite file safely (WAL journal, a busy timeout; each row names its replica in
``settings``); replicas on different hosts each have their own file. Rows of an
utterance cut by a replica's death are lost with the process: the client got an
``error``/close for it instead.

Ray is an extra (``pip install ".[ray]"``); nothing else in the package imports this
module.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request, Response
from loguru import logger
from ray import serve
from ray.serve import Application

from ..engine import TTSConfig
from ..serving.app import TTSServerSettings, create_app
from ..serving.settings import ServingSettings

#: How long one ``serve.status()`` answer is reused by ``/health`` (a probe flood must
#: not become a controller flood).
POOL_VIEW_TTL_S = 1.0
#: Deployment statuses in which the pool serves normally.
HEALTHY_POOL = ("HEALTHY", "UPSCALING", "DOWNSCALING")
#: Response header naming the replica that answered an HTTP request.
REPLICA_HEADER = "X-TTS-Replica"


@serve.deployment(
    name="tts",
    # One engine per replica; the YAML sets num_gpus for a GPU pool.
    ray_actor_options={"num_cpus": 1},
    # Every open websocket is one ongoing request for its whole life (a bot holds one
    # per conversation), so this bounds sockets per replica like max_connections does.
    max_ongoing_requests=64,
    health_check_period_s=5,
    health_check_timeout_s=30,
)
@serve.ingress()
class TTSPool:
    """One replica of the pool: the standalone TTS app on this replica's own engine."""

    def __init__(
        self,
        tts: dict[str, Any] | None = None,
        serving: dict[str, Any] | None = None,
        allowed_origins: str = "",
    ) -> None:
        """Read this replica's settings (environment, then the builder's arguments).

        Args:
            tts: ``TTSConfig`` fields over ``PIPECAT_VIBEVOICE_*`` (e.g. ``engine``).
            serving: ``ServingSettings`` fields over ``PIPECAT_VIBEVOICE_SERVING_*``.
            allowed_origins: Browser origins allowed beyond the server's own (empty:
                ``PIPECAT_VIBEVOICE_SERVING_ALLOWED_ORIGINS``, as on the plain server).

        """
        context = serve.get_replica_context()
        self.replica: str = context.replica_id.unique_id
        self.app_name: str = context.app_name
        self.deployment: str = context.deployment
        self.tts_config = TTSConfig.from_env(**dict(tts or {}))
        self.serving = ServingSettings.from_env(**{"replica": self.replica, **dict(serving or {})})
        self.allowed_origins = allowed_origins or TTSServerSettings.from_env().allowed_origins
        self._app: FastAPI | None = None
        self._pool_view: tuple[float, dict[str, Any]] | None = None
        _log(
            f"TTS replica {self.replica} of {self.app_name}/{self.deployment}: "
            f"engine={self.tts_config.engine} store={self.serving.store_url}"
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The plain server's app, with the pool's view in ``/health`` (Serve calls this)."""
        app = create_app(
            self.serving,
            self.tts_config,
            allowed_origins=self.allowed_origins,
            pool_health=self.pool_health,
        )

        @app.middleware("http")
        async def name_the_replica(request: Request, call_next: Any) -> Response:
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = self.replica
            return response

        self._app = app
        return app

    async def check_health(self) -> None:
        """Serve's periodic probe: raise, and the controller replaces this replica.

        The engine is loaded before the replica is RUNNING (the app's start-up warms
        it), so an engine that is not ``ok``/``degraded`` here has failed.
        """
        state = getattr(self._app.state, "serving_state", None) if self._app else None
        engine = state.loaded_engine if state is not None else None
        if engine is None:
            raise RuntimeError(f"replica {self.replica}: no TTS engine loaded")
        health = await engine.health_check()
        if health.get("status") not in ("ok", "degraded"):
            raise RuntimeError(f"replica {self.replica}: engine is {health.get('status')}")

    async def pool_health(self) -> dict[str, Any]:
        """The controller's view of this deployment, for ``/health`` (cached briefly)."""
        now = time.monotonic()
        if self._pool_view is not None and now - self._pool_view[0] < POOL_VIEW_TTL_S:
            return self._pool_view[1]
        view = await asyncio.to_thread(pool_view, self.app_name, self.deployment)
        view["answered_by"] = self.replica
        self._pool_view = (now, view)
        return view


def pool_view(app_name: str, deployment: str) -> dict[str, Any]:
    """``serve.status()`` of one deployment: its status and replicas per state.

    ``status``: ``ok`` when Serve calls the deployment healthy (or scaling) and a
    replica runs, ``degraded`` when some run but Serve reports it otherwise (a replica
    being replaced, a failed update), ``unavailable`` when none runs.
    """
    app = serve.status().applications.get(app_name)
    found = app.deployments.get(deployment) if app is not None else None
    if found is None:
        return {"status": "unknown", "error": f"no deployment {app_name}/{deployment}"}
    replicas = {_name(state): count for state, count in found.replica_states.items()}
    running = replicas.get("RUNNING", 0)
    serve_status = _name(found.status)
    if running == 0:
        status = "unavailable"
    elif serve_status in HEALTHY_POOL:
        status = "ok"
    else:
        status = "degraded"
    return {
        "status": status,
        "serve_status": serve_status,
        "replicas": replicas,
        "running": running,
        "message": found.message or None,
    }


def _log(message: str) -> None:
    """Log through loguru from a module function.

    ``@serve.ingress`` wraps the class in a local class that Ray pickles by value on
    every replica; the class body must not reach module objects that do not pickle
    (loguru's handlers hold the process's stderr), module functions go by reference.
    """
    logger.info(message)


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


def build_app(args: dict[str, Any] | None = None, **options: Any) -> Application:
    """The Serve application (``import_path`` of deploy/ray/serve.yaml).

    ``args`` (the YAML's ``args``, or ``key=value`` after ``serve run module:build_app``):
    ``tts`` and ``serving`` (dicts of ``TTSConfig`` / ``ServingSettings`` fields over
    the replicas' environment) and ``allowed_origins``. Replica count, resources and
    autoscaling come from the YAML's ``deployments`` section; from Python, pass them as
    ``options`` (``TTSPool.options``: ``num_replicas``, ``ray_actor_options``, …).
    """
    args = dict(args or {})
    unknown = set(args) - {"tts", "serving", "allowed_origins"}
    if unknown:
        raise ValueError(
            f"unknown argument(s) {sorted(unknown)}: use tts, serving, allowed_origins"
        )
    # Fail here, in the driver, on a bad field, not once per replica.
    TTSConfig.from_env(**dict(args.get("tts") or {}))
    ServingSettings.from_env(**dict(args.get("serving") or {}))
    deployment = TTSPool.options(**options) if options else TTSPool
    return deployment.bind(
        tts=args.get("tts"),
        serving=args.get("serving"),
        allowed_origins=str(args.get("allowed_origins") or ""),
    )
