"""What the CUDA image must hold, asked from inside it on a machine with or without a GPU:

    podman run --rm -i --entrypoint python IMAGE - < docker/check_cuda_image.py

torch is built for CUDA 13.0; cuDNN, cuBLAS and NCCL load and answer their version calls (none
of which needs a GPU); and the installed sizes that docker/smoke.sh weighs the image against: the
wheels `pip install torch` brings (torch's CUDA build, its nvidia-*, cuda-* and triton wheels and
its few pure-Python requirements), the CUDA ones among them, and the whole virtualenv. Prints one
JSON object; exits 1 naming each problem. Run by docker/smoke.sh cuda; not part of the image.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import torch

EXPECTED_CUDA = "13.0"
# The libraries' sonames as torch's CUDA 13.0 build links them.
SONAMES = {"cudnn": "libcudnn.so.9", "cublas": "libcublas.so.13", "nccl": "libnccl.so.2"}
CUDA_DISTRIBUTIONS = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def mapped_libraries() -> dict[str, str]:
    """The shared objects this process has loaded: file name -> path."""
    paths = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line}
    return {Path(path).name: path for path in paths}


def cudnn_version() -> str:
    encoded = torch.backends.cudnn.version()  # loads libcudnn; major * 10000 + minor * 100 + patch
    if encoded is None:
        raise OSError("torch.backends.cudnn.version() is None: cuDNN did not load")
    return f"{encoded // 10000}.{encoded % 10000 // 100}.{encoded % 100}"


def cublas_version(path: str) -> str:
    """cublasGetProperty answers from the library itself, with no GPU and no handle."""
    library = ctypes.CDLL(path)
    parts = []
    for field in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        if library.cublasGetProperty(field, ctypes.byref(value)) != 0:
            raise OSError(f"cublasGetProperty({field}) failed in {path}")
        parts.append(value.value)
    return ".".join(map(str, parts))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_closure() -> set[str]:
    """torch and every distribution it requires, directly or not: what `pip install torch` brings."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # the image has no packaging of its own: setuptools, torch's requirement, vendors one
        import setuptools  # noqa: F401  (puts its vendored packages on sys.path)
        from packaging.requirements import Requirement

    # torch asks for cuda-toolkit with extras (cublas, cudnn, ...), which bring the nvidia-* wheels.
    seen: set[tuple[str, str]] = set()
    pending = [("torch", "")]
    while pending:
        name, extra = pending.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                pending += [(canonical(requirement.name), wanted) for wanted in ["", *requirement.extras]]
    return {name for name, _ in seen}


def installed_bytes(names: set[str]) -> int:
    """Bytes on disk of the files of these installed distributions (their byte code included)."""
    files: set[Path] = set()
    for distribution in metadata.distributions():
        if canonical(distribution.metadata["Name"]) in names:
            files.update(Path(str(f.locate())) for f in distribution.files or [])
    return sum(f.stat().st_size for f in files if f.is_file())


def main() -> int:
    problems: list[str] = []
    report: dict[str, object] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                                 "gpu_visible": torch.cuda.is_available()}
    if torch.version.cuda != EXPECTED_CUDA:
        problems.append(f"torch.version.cuda is {torch.version.cuda!r}, expected {EXPECTED_CUDA!r}")
    try:
        report["cudnn"] = cudnn_version()
        nccl = torch.cuda.nccl.version()  # ncclGetVersion
        report["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    except (OSError, RuntimeError) as error:
        problems.append(f"a CUDA library did not load: {error}")
    loaded = mapped_libraries()
    report["libraries"] = {name: loaded.get(soname) for name, soname in SONAMES.items()}
    for name, soname in SONAMES.items():
        if soname not in loaded:
            problems.append(f"{name} ({soname}) is not loaded")
    if "libcublas.so.13" in loaded:
        try:
            report["cublas"] = cublas_version(loaded["libcublas.so.13"])
        except (OSError, AttributeError) as error:
            problems.append(f"cuBLAS does not answer: {error}")
    closure = torch_closure()
    cuda_only = {name for name in closure if CUDA_DISTRIBUTIONS.match(name)}
    report["torch_wheels"] = sorted(closure)
    report["torch_wheels_bytes"] = installed_bytes(closure)
    report["cuda_wheels_bytes"] = installed_bytes(cuda_only)
    venv_files = [f for f in Path(sys.prefix).rglob("*") if f.is_file() and not f.is_symlink()]
    report["venv_bytes"] = sum(f.stat().st_size for f in venv_files)
    report["problems"] = problems
    print(json.dumps(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
