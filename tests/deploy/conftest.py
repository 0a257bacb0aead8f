"""Fixtures of the deploy tests: a real Ray Serve TTS pool on this machine (loopback, no network).

One local Ray instance (2 CPUs, no dashboard, no usage reports) and the application of
deploy/ray/serve.yaml, deployed with Serve's Python API from what the YAML says (its
builder, args, environment and deployment options), with two changes a test needs: a
fixed pool of 2 replicas instead of the autoscaler (a test must know how many replicas
serve), and half a CPU each so a replacement replica fits next to them.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVE_YAML = ROOT / "deploy" / "ray" / "serve.yaml"
REPLICAS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayPool:
    """Where the pool listens, its names in Serve and its store."""

    port: int
    replicas: int
    app_name: str
    deployment: str
    store_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/tts/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replica_actor(self, replica: str) -> Any:
        """The Ray actor of a replica named in a ``started`` event.

        Serve names a replica's actor ``SERVE_REPLICA::<app>#<deployment>#<id>`` in the
        ``serve`` namespace (``ReplicaID.to_full_id_str``).
        """
        import ray

        name = f"SERVE_REPLICA::{self.app_name}#{self.deployment}#{replica}"
        return ray.get_actor(name, namespace="serve")

    def replica_states(self) -> dict[str, int]:
        from ray import serve

        found = serve.status().applications[self.app_name].deployments[self.deployment]
        return {str(getattr(k, "value", k)): v for k, v in found.replica_states.items()}

    def wait_running(self, timeout: float = 90.0) -> None:
        """Until Serve reports the pool's replicas RUNNING and no other state."""
        count = self.replicas
        deadline = time.monotonic() + timeout
        states: dict[str, int] = {}
        while time.monotonic() < deadline:
            states = self.replica_states()
            if states == {"RUNNING": count}:
                return
            time.sleep(0.1)
        raise AssertionError(f"pool not back to {count} running replicas: {states}")

    def wait_replaced(self, timeout: float = 90.0) -> None:
        """After a replica was killed: until Serve has noticed and its replacement runs.

        Right after ``ray.kill`` the controller still counts the dead replica as
        RUNNING (it notices within its next control loops), so "2 running" alone would
        pass at once. First the count must drop, then come back; a replacement takes
        seconds to start (a process and an engine), far longer than one poll.
        """
        deadline = time.monotonic() + 15.0
        while self.replica_states() == {"RUNNING": self.replicas}:
            if time.monotonic() > deadline:
                raise AssertionError("Serve never noticed the killed replica")
            time.sleep(0.02)
        self.wait_running(timeout)


def start_pool(tmp: Path) -> RayPool:
    """Start Ray and Serve and deploy the YAML's application (blocks until it runs)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    spec = yaml.safe_load(SERVE_YAML.read_text())
    app_spec = spec["applications"][0]
    deployment_spec = dict(app_spec["deployments"][0])
    module_name, builder_name = app_spec["import_path"].split(":")
    builder = getattr(importlib.import_module(module_name), builder_name)

    store = tmp / "pool.sqlite3"
    args = dict(app_spec.get("args") or {})
    args["serving"] = {
        **(args.get("serving") or {}),
        "store_url": str(store),
        "rate_limit_per_s": 1000.0,
        "rate_limit_burst": 1000,
    }
    env = {
        **app_spec.get("runtime_env", {}).get("env_vars", {}),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    actor_options = {
        **deployment_spec.get("ray_actor_options", {}),
        "num_cpus": 0.5,
        "runtime_env": {"env_vars": env},
    }
    for key in ("name", "autoscaling_config", "ray_actor_options", "num_replicas"):
        deployment_spec.pop(key, None)

    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        # Audio never goes through the object store; a small one fits any CI /dev/shm.
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
        namespace="pvv-tests",
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = builder(args, num_replicas=REPLICAS, ray_actor_options=actor_options, **deployment_spec)
    serve.run(app, name=app_spec["name"], route_prefix=app_spec.get("route_prefix", "/"))
    pool = RayPool(port, REPLICAS, app_spec["name"], app_spec["deployments"][0]["name"], store)
    pool.wait_running()
    return pool


def stop_pool() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayPool]:
    """Ray + Serve + 2 replicas of deploy/ray/serve.yaml's app (about 20 s to start)."""
    started = start_pool(tmp_path_factory.mktemp("ray-pool"))
    try:
        yield started
    finally:
        stop_pool()
