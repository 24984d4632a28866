"""deploy/kubernetes/: every overlay renders with kubectl's kustomize and validates against the
Kubernetes schemas; the rules schemas cannot check hold on every overlay, and each of them fails
on a copy broken in its own way."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.frontend.server import CANCEL_WAIT_S
from service.settings import Settings
from tests.deploy import kubernetes as k8s
from tests.deploy.helpers import served_paths
from tests.service.helpers import running_app, settings_for

DRAIN_DEFAULT_S = Settings.model_fields["shutdown_grace_s"].default
# After the drain: cancelled streams get CANCEL_WAIT_S to send their final event, then the engine
# processes stop (2 s each when idle, up to 16 s measured with 4 models on a busy 2-core machine).
AFTER_DRAIN_S = CANCEL_WAIT_S + 15
OVERLAY_IDS = [path.name for path in k8s.OVERLAYS]


@pytest.fixture(scope="module", params=k8s.OVERLAYS, ids=OVERLAY_IDS)
def rendered(request: pytest.FixtureRequest) -> list[k8s.Object]:
    return k8s.render(request.param)


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return served_paths()


@pytest.fixture(scope="module")
def exported_metrics(tiny_models: Path) -> set[str]:
    """The metric names a live server's /metrics exports after one generation."""

    async def scrape() -> str:
        async with running_app(settings_for(tiny_models)) as (client, _):
            await client.post("/generate", json={"inputs": "the", "parameters": {"max_new_tokens": 3}})
            return (await client.get("/metrics")).text

    families = text_string_to_metric_families(asyncio.run(scrape()))
    return {sample.name for family in families for sample in family.samples}


def test_the_overlays_cover_every_component():
    used = {line.strip().removeprefix("- ../../components/") for overlay in k8s.OVERLAYS
            for line in (overlay / "kustomization.yaml").read_text().splitlines() if "components/" in line}
    assert used == {path.name for path in (k8s.KUBERNETES / "components").iterdir()}
    assert {"cpu", "gpu", "keda", "hpa", "ingress"} <= set(OVERLAY_IDS)


@pytest.mark.parametrize("version", k8s.SCHEMA_VERSIONS)
def test_every_object_validates_against_the_schemas(rendered, version):
    assert k8s.schema_problems(rendered, version) == []


@pytest.mark.parametrize("version", k8s.SCHEMA_VERSIONS)
@pytest.mark.parametrize("tool", k8s.TOOLS, ids=[path.name for path in k8s.TOOLS])
def test_every_tool_validates_against_the_schemas(tool, version):
    assert k8s.schema_problems([yaml.safe_load(tool.read_text())], version) == []


def test_probes_ask_the_apps_own_routes(rendered, routes):
    assert k8s.probe_problems(rendered, routes) == []


def test_the_grace_period_outlasts_pause_and_drain(rendered):
    assert k8s.grace_problems(rendered, DRAIN_DEFAULT_S, AFTER_DRAIN_S) == []


def test_service_and_container_ports_agree(rendered):
    assert k8s.port_problems(rendered) == []


def test_resources_and_security_are_set(rendered):
    assert k8s.security_problems(rendered) == []


def test_the_autoscalers_read_a_metric_the_server_exports(rendered, exported_metrics):
    assert k8s.metric_problems(rendered, exported_metrics) == []


def test_the_autoscaling_overlays_leave_the_replica_count_to_the_autoscaler(rendered):
    deployment = k8s.of_kind(rendered, "Deployment")[0]
    autoscaled = k8s.of_kind(rendered, "ScaledObject") + k8s.of_kind(rendered, "HorizontalPodAutoscaler")
    assert ("replicas" in deployment["spec"]) != bool(autoscaled)


def test_the_gpu_overlay_asks_for_one_gpu_with_the_cuda_image():
    rendered = k8s.render(k8s.KUBERNETES / "overlays" / "gpu")
    (_, container), = k8s.containers(rendered)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and container["image"].endswith(":cuda")
    assert k8s.env(container)["CHARLM_DEVICE"] == "cuda"
    pod = k8s.of_kind(rendered, "Deployment")[0]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_the_ingress_streams_unbuffered_with_long_timeouts():
    (ingress,) = k8s.of_kind(k8s.render(k8s.KUBERNETES / "overlays" / "ingress"), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    request_timeout = Settings.model_fields["request_timeout_s"].default
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > request_timeout


BREAKS = {  # rule -> (kind, field, broken value, words of the problem it must report)
    "schema": ("Deployment", "spec.template.spec.containers.0.readinesProbe", {}, "readinesProbe"),
    "KEDA schema": ("ScaledObject", "spec.minReplicaCont", 2, "'minReplicaCont' was unexpected"),
    "probe route": ("Deployment", "spec.template.spec.containers.0.readinessProbe.httpGet.path", "/healthz",
                    "/healthz, which the app does not serve"),
    "readiness is not liveness": ("Deployment", "spec.template.spec.containers.0.readinessProbe.httpGet.path",
                                  "/health/live", "not /health/ready"),
    "grace period": ("Deployment", "spec.template.spec.terminationGracePeriodSeconds", 60,
                     "terminationGracePeriodSeconds 60 is not above"),
    "ports": ("Service", "spec.ports.0.targetPort", 8080, "targetPort 8080 is not a port"),
    "root": ("Deployment", "spec.template.spec.securityContext.runAsNonRoot", None, "may run as root"),
    "read-only root": ("Deployment", "spec.template.spec.containers.0.securityContext.readOnlyRootFilesystem",
                       False, "root filesystem is writable"),
    "resources": ("Deployment", "spec.template.spec.containers.0.resources.requests", {},
                  "requests and a memory limit"),
    "metric": ("ScaledObject", "spec.triggers.0.metadata.query", "sum(charlm_queue_length)",
               "charlm_queue_length, which /metrics does not export"),
}


@pytest.mark.parametrize("rule", list(BREAKS))
def test_each_rule_fails_on_a_copy_broken_against_it(rule, routes, exported_metrics):
    kind, field, value, complaint = BREAKS[rule]
    good = k8s.render(k8s.KUBERNETES / "overlays" / "gpu-keda")
    checks = {
        "schema": lambda objects: k8s.schema_problems(objects, k8s.SCHEMA_VERSIONS[-1]),
        "KEDA schema": lambda objects: k8s.schema_problems(objects, k8s.SCHEMA_VERSIONS[-1]),
        "probe route": lambda objects: k8s.probe_problems(objects, routes),
        "readiness is not liveness": lambda objects: k8s.probe_problems(objects, routes),
        "grace period": lambda objects: k8s.grace_problems(objects, DRAIN_DEFAULT_S, AFTER_DRAIN_S),
        "ports": k8s.port_problems,
        "root": k8s.security_problems,
        "read-only root": k8s.security_problems,
        "resources": k8s.security_problems,
        "metric": lambda objects: k8s.metric_problems(objects, exported_metrics),
    }
    assert checks[rule](good) == []
    problems = checks[rule](k8s.broken(good, kind, field, value))
    assert any(complaint in problem for problem in problems), problems


def test_a_broken_copy_of_the_files_renders_and_fails_the_grace_rule(tmp_path):
    """The whole path, files to verdict: a copy of deploy/kubernetes with the drain timeout raised to
    120 s (and the grace period left at 60 s) still renders, and the grace rule names the problem."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(k8s.KUBERNETES, copy)
    deployment = copy / "base" / "deployment.yaml"
    text = deployment.read_text()
    drain = '- name: CHARLM_SHUTDOWN_GRACE_S\n              value: "30"'
    assert drain in text
    deployment.write_text(text.replace(drain, drain.replace('"30"', '"120"')))
    problems = k8s.grace_problems(k8s.render(copy / "overlays" / "cpu"), DRAIN_DEFAULT_S, AFTER_DRAIN_S)
    assert problems == ["charlm: terminationGracePeriodSeconds 75 is not above preStop 10 + drain timeout 120 "
                        "+ 20 s to end and exit"]
