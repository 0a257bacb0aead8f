"""deploy/k8s/ against the Kubernetes schemas (kubernetes-validate's bundled copy, offline).

No cluster runs here: this checks that every object is one the API server would accept
(strict: unknown fields refused) and that the pieces point at each other (selectors,
ports, the bots' TTS URL, the autoscaler's target). Applying them is left to a cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.37"


def objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in objects() if d["kind"] == kind and d["metadata"]["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize(
    "name,doc", objects(), ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in objects()]
)
def test_every_object_passes_the_strict_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_refuses_a_broken_object() -> None:
    """The check can fail: a misspelt field and a wrong type are both refused."""
    pool = by_kind("Deployment", "pvv-tts")
    misspelt = copy.deepcopy(pool)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, VERSION, strict=True)
    wrong = copy.deepcopy(pool)
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, VERSION, strict=True)


def test_the_pool_asks_for_a_gpu_and_probes_health() -> None:
    pool = by_kind("Deployment", "pvv-tts")
    (container,) = pool["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    assert env_of(container)["PIPECAT_VIBEVOICE_SERVING_REPLICA"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_services_select_their_pods_and_the_bots_reach_the_pool_through_its_service() -> None:
    for name in ("pvv-tts", "pvv-bot"):
        deployment, service = by_kind("Deployment", name), by_kind("Service", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        ports = {
            p["name"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name

    tts_service = by_kind("Service", "pvv-tts")
    (port,) = tts_service["spec"]["ports"]
    (bot,) = by_kind("Deployment", "pvv-bot")["spec"]["template"]["spec"]["containers"]
    assert env_of(bot)["PIPECAT_VIBEVOICE_TTS_URL"] == (
        f"ws://{tts_service['metadata']['name']}:{port['port']}/v1/tts/stream"
    )
    # Stateless bots: no volumes, and no liveness that depends on the pool.
    assert "volumes" not in by_kind("Deployment", "pvv-bot")["spec"]["template"]["spec"]
    assert "httpGet" not in bot["livenessProbe"]


def test_the_autoscaler_scales_the_pool() -> None:
    hpa = by_kind("HorizontalPodAutoscaler", "pvv-tts")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "pvv-tts",
    }
    assert hpa["spec"]["minReplicas"] >= 2
