"""The locks in requirements/ match pyproject.toml, offline: every requirement of the install a lock
serves is pinned there at a version it allows, on each platform the lock covers; the lock's direct
requirements are exactly pyproject's (a requirement removed or added without `make lock` fails);
the serving lock agrees with the dev lock; no lock names a registry host; torch's own requirements
are all locked (requirements/torch-needs.in)."""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "requirements"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
NOT_LOCKED = {"torch"}  # requirements/not-locked.txt
LOCKED_EXTRAS = {"serve.txt": (), "dev.txt": ("train", "dev", "ray")}
PLATFORMS = {  # where the locks are installed: the Makefile's machines and the images
    "3.11-linux-x86_64": ("3.11", "linux", "x86_64"),
    "3.12-linux-x86_64": ("3.12", "linux", "x86_64"),
    "3.11-linux-aarch64": ("3.11", "linux", "aarch64"),
}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    via: tuple[str, ...]  # uv's annotations: what asked for it


def read_lock(path: Path) -> list[Pin]:
    """A lock's pins: `name==version ; marker \\` lines, their hashes, then `# via` comments."""
    pins: list[Pin] = []
    entry: list[str] = []
    via: list[str] = []

    def close() -> None:
        if entry:
            requirement = Requirement(re.sub(r"--hash=\S+", "", " ".join(entry)).strip())
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {requirement} is not pinned"
            pins.append(Pin(canonicalize_name(requirement.name), specifier.version, requirement.marker, tuple(via)))
        entry.clear()
        via.clear()

    for line in path.read_text().splitlines():
        text = line.strip().rstrip("\\").strip()
        if not line.startswith((" ", "#")) and text:
            close()
            entry.append(text)
        elif line.startswith(" ") and text.startswith("--hash="):
            entry.append(text)
        elif line.startswith("    #"):
            via.append(text.lstrip("#").strip().removeprefix("via").strip())
    close()
    return pins


def environment(platform: str) -> dict[str, str]:
    python, system, machine = PLATFORMS[platform]
    return {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
            "sys_platform": system, "platform_system": system.capitalize(), "platform_machine": machine,
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements_for(lock: str) -> list[Requirement]:
    """What the install a lock serves asks for: the core, its extras, torch's own needs; not torch."""
    texts = list(PROJECT["dependencies"])
    for extra in LOCKED_EXTRAS[lock]:
        texts += PROJECT["optional-dependencies"][extra]
    texts += [line for line in (LOCKS / "torch-needs.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    return [r for r in map(Requirement, texts) if canonicalize_name(r.name) not in NOT_LOCKED]


def applies(marker: Marker | None, env: dict[str, str]) -> bool:
    return marker is None or marker.evaluate({**env, "extra": ""})


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("lock", sorted(LOCKED_EXTRAS))
def test_every_requirement_is_pinned_in_its_lock_at_a_version_it_allows(lock, platform):
    env = environment(platform)
    pins: dict[str, list[str]] = {}
    for pin in read_lock(LOCKS / lock):
        if applies(pin.marker, env):
            pins.setdefault(pin.name, []).append(pin.version)
    assert all(len(versions) == 1 for versions in pins.values()), f"{lock}: two pins of one package on {platform}"
    for requirement in requirements_for(lock):
        if not applies(requirement.marker, env):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {requirement} on {platform}: run `make lock` (docs/install.md)"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{lock} pins {name}=={pins[name][0]}, which {requirement} does not allow: run `make lock`")


@pytest.mark.parametrize("lock", sorted(LOCKED_EXTRAS))
def test_a_locks_direct_requirements_are_exactly_those_of_pyproject(lock):
    """A requirement removed from pyproject.toml without `make lock` would stay in the lock."""
    direct = {pin.name for pin in read_lock(LOCKS / lock)
              if {"charlm (pyproject.toml)", "-r requirements/torch-needs.in"} & set(pin.via)}
    wanted = {canonicalize_name(r.name) for r in requirements_for(lock)}
    assert direct == wanted, (f"{lock}: not locked {sorted(wanted - direct)}, locked but no longer asked for "
                              f"{sorted(direct - wanted)}: run `make lock` (docs/install.md)")


def test_the_serving_lock_pins_what_the_dev_lock_pins():
    dev = {(pin.name, str(pin.marker)): pin.version for pin in read_lock(LOCKS / "dev.txt")}
    for pin in read_lock(LOCKS / "serve.txt"):
        assert dev.get((pin.name, str(pin.marker))) == pin.version, f"serve.txt: {pin.name}=={pin.version}"


def test_the_locks_name_no_registry_host_and_hash_every_pin():
    for path in LOCKS.glob("*.txt"):
        text = path.read_text()
        assert "://" not in text, path.name
        assert not re.search(r"^\s*(-i|-f|--index-url|--extra-index-url|--find-links|--trusted-host)\b", text,
                             flags=re.MULTILINE), path.name
        for pin in read_lock(path) if path.name != "not-locked.txt" else []:
            block = text.split(f"\n{pin.name}=={pin.version}", 1)[-1].split("\n", 2)[1]
            assert block.strip().startswith("--hash=sha256:"), f"{path.name}: {pin.name} has no hash"


def test_torch_needs_nothing_that_is_not_locked():
    """requirements/torch-needs.in against the installed torch's own metadata: what it requires on
    this platform, less the CUDA libraries and Triton that only its CUDA builds bring."""
    try:
        needs = [Requirement(text) for text in importlib.metadata.requires("torch") or []]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch is not installed")
    listed = {canonicalize_name(r.name) for r in requirements_for("serve.txt")}
    for requirement in needs:
        name = canonicalize_name(requirement.name)
        if applies(requirement.marker, default_environment()) and not name.startswith(("nvidia-", "cuda-")):
            assert name in listed or name == "triton", f"torch needs {requirement}: add it to torch-needs.in"
