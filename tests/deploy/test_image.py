"""docker/Dockerfile and .dockerignore: hadolint, then what the image promises, read from the files."""

from __future__ import annotations

import re
import shlex
import subprocess

from tests.deploy.helpers import (
    DOCKERFILE,
    REPO,
    build_argument_defaults,
    build_stages,
    hadolint_binary,
    in_build_context,
    instructions_named,
    makefile_torch_pin,
    served_paths,
)
from tests.helpers import missing_tool


def runtime_stage() -> list:
    return build_stages()[-1]


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = hadolint_binary()
    if hadolint is None:
        missing_tool("hadolint is not installed (the dev extra installs it on Linux x86-64)")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copy_source_exists_and_reaches_the_build_context():
    copies = [i for i in instructions_named("COPY") if "--from=" not in i.arguments]
    assert copies
    for copy in copies:
        words = [w for w in shlex.split(copy.arguments) if not w.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_tests_git_venvs_and_caches_out():
    for path in [".git", "tests/conftest.py", ".venv/bin/python", "bench/serve.py", "docs",
                 "service/__pycache__/app.cpython-311.pyc", "models/shakespeare-gpt/training_state.pt"]:
        assert not in_build_context(path), f"{path} would be sent to the build"
    for path in ["service/frontend/app.py", "models/shakespeare-gpt/model.safetensors", "pyproject.toml"]:
        assert in_build_context(path), f"{path} would be missing from the build"


def test_the_runtime_runs_as_a_numeric_non_root_user():
    users = [i.arguments for i in runtime_stage() if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]} is not a numeric non-root user"
    assert not group or (group.isdigit() and int(group) != 0)
    created = [i for i in runtime_stage() if i.keyword == "RUN" and "useradd" in i.arguments]
    assert created and f"--uid {user}" in created[0].arguments, "the numeric user has no account (no home)"


def test_the_entrypoint_starts_charlm_serve_on_all_interfaces_port_8000():
    stage = runtime_stage()
    entrypoint = [i.exec_form() for i in stage if i.keyword == "ENTRYPOINT"][-1]
    command = [i.exec_form() for i in stage if i.keyword == "CMD"][-1]
    assert entrypoint == ["charlm"] and command == ["serve"], "ENTRYPOINT/CMD must be exec form: charlm serve"
    environment = " ".join(i.arguments for i in stage if i.keyword == "ENV")
    assert "CHARLM_HOST=0.0.0.0" in environment and "CHARLM_PORT=8000" in environment
    assert [i.arguments for i in stage if i.keyword == "EXPOSE"] == ["8000"]


def test_the_healthcheck_is_exec_form_and_asks_a_real_route_on_the_served_port():
    checks = [i for i in runtime_stage() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].exec_form()
    assert command is not None and command[0] == "python", "HEALTHCHECK must be exec form, with no curl"
    url = re.search(r"http://127\.0\.0\.1:\{[^}]*'(\d+)'\)\}(/\w+)", command[-1])
    assert url, f"no health URL in {command[-1]}"
    assert url.group(1) == "8000"
    assert url.group(2) in served_paths()


def test_every_download_can_trust_the_proxy_ca_secret():
    fetches = re.compile(r"\b(pip (--python \S+ )?install|pip wheel|apt-get update)\b")
    downloads = [i.arguments for i in instructions_named("RUN")
                 if fetches.search(i.arguments) and "--no-index" not in i.arguments]
    assert len(downloads) >= 3  # apt for Python, pip for the project's wheel, pip for the virtualenv
    for arguments in downloads:
        assert "--mount=type=secret,id=ca_bundle" in arguments, arguments
        pattern = r"\S+ (?:pip (?:--python \S+ )?(?:install|wheel)|apt-get (?:update|install))"
        for command in re.findall(pattern, arguments):
            assert command.startswith("with-extra-ca "), f"{command}: without the proxy CA"


def test_torch_is_pinned_with_its_flavour_from_build_arguments():
    arguments = {i.arguments.split("=")[0] for i in instructions_named("ARG")}
    assert {"BASE_IMAGE", "TORCH_VERSION", "TORCH_FLAVOUR", "TORCH_INDEX_URL"} <= arguments
    torch = [i.arguments for i in instructions_named("RUN") if "torch==" in i.arguments]
    assert len(torch) == 1 and '"torch==${TORCH_VERSION}${TORCH_FLAVOUR:++${TORCH_FLAVOUR}}"' in torch[0]
    assert '${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"}' in torch[0]


def test_the_default_build_is_pypis_cuda_torch_on_debian_12():
    """No flavour means PyPI's torch (its CUDA 13.0 build) from pip's default index; a flavour means
    PyTorch's index for it. docker/smoke.sh cuda builds and checks exactly these defaults."""
    defaults = build_argument_defaults()
    assert defaults["BASE_IMAGE"] == "debian:12-slim"
    assert defaults["TORCH_VERSION"] == makefile_torch_pin()
    assert defaults["TORCH_FLAVOUR"] == ""
    assert defaults["TORCH_INDEX_URL"] == "${TORCH_FLAVOUR:+https://download.pytorch.org/whl/${TORCH_FLAVOUR}}"


def test_the_runtime_tells_the_nvidia_toolkit_what_it_needs():
    environment = " ".join(i.arguments for i in runtime_stage() if i.keyword == "ENV")
    for setting in ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
                    "NVIDIA_REQUIRE_CUDA=${NVIDIA_REQUIRE_CUDA}"]:
        assert setting in environment
    assert build_argument_defaults()["NVIDIA_REQUIRE_CUDA"] == '"cuda>=13.0"'


def test_the_virtualenv_is_one_layer_without_a_pip_cache():
    """One RUN writes /opt/venv (a copy from another stage would write it twice); every pip
    install keeps no cache, in a layer or in a cache mount."""
    writers = [i.arguments for i in instructions_named("RUN") if "-m venv --without-pip /opt/venv" in i.arguments]
    assert len(writers) == 1 and "torch==" in writers[0]
    assert not [i for i in instructions_named("COPY") if "/opt/venv" in i.arguments]
    for run in instructions_named("RUN"):
        for command in re.findall(r"pip (?:--python \S+ )?(?:install|wheel)[^&]*", run.arguments):
            assert "--no-cache-dir" in command, command
        assert "type=cache" not in run.arguments


def test_the_runtime_virtualenv_leaves_out_pip_and_matplotlib():
    """The serving image holds no installer and no plotting (about 116 MB): the virtualenv is made
    without pip, pip runs from a stage of its own, and the serving lock it installs (every version
    checked against its hash) has no matplotlib, which is the train extra."""
    venv = [i.arguments for i in instructions_named("RUN") if "/opt/venv" in i.arguments and "pip" in i.arguments]
    assert venv and all("--without-pip" in a or "python3 -m venv" not in a for a in venv)
    for arguments in venv:
        for pip in re.findall(r"\S+/bin/pip (?:--python \S+ )?(?:install|wheel)", arguments):
            assert pip.startswith("/opt/installer/bin/pip --python /opt/venv/bin/python"), pip
    assert "--require-hashes -r /tmp/charlm/serve.txt" in " ".join(" ".join(venv).split())
    assert "COPY requirements/serve.txt /tmp/charlm/serve.txt" in [f"COPY {i.arguments}" for i in runtime_stage()]
    assert not re.search(r"^matplotlib==", (REPO / "requirements" / "serve.txt").read_text(), flags=re.MULTILINE)
    assert not [i for i in runtime_stage() if i.keyword == "COPY" and "/opt/installer" in i.arguments]


def test_the_bundled_models_are_the_default_models_directory():
    stage = runtime_stage()
    copies = [i.arguments for i in stage if i.keyword == "COPY"]
    assert "models ./models" in copies
    workdir = [i.arguments for i in stage if i.keyword == "WORKDIR"][-1]
    environment = " ".join(i.arguments for i in stage if i.keyword == "ENV")
    assert f"CHARLM_MODELS_DIR={workdir}/models" in environment
