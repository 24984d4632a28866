"""`charlm serve` started for a benchmark: on a free loopback port, on the bundled models unless
told otherwise, stopped with SIGTERM afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the process tree as the memory soak test reads it
from tests.service.load import process_tree as descendants  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned_server(*flags: str, startup_s: float = 300) -> Iterator[str]:
    """The base URL of a `charlm serve` process with `flags`, once /health answers 200."""
    with spawned_process(*flags, startup_s=startup_s) as (url, _):
        yield url


@contextlib.contextmanager
def spawned_process(*flags: str, startup_s: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """`spawned_server`, with the process too (to read its CPU time)."""
    port = free_port()
    command = [sys.executable, "-m", "charlm", "serve", "--port", str(port), "--log-level", "warning",
               "--admin-key", BENCH_ADMIN_KEY, *flags]
    process = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while not ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"charlm serve did not start (exit status {process.poll()})")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        process.wait(60)


BENCH_ADMIN_KEY = "bench-admin"  # spawned servers answer /admin/models, which names their engines' pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (those still alive), from /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_processes(url: str, pid: int) -> dict[str, list[int]]:
    """A spawned server's processes by role: its engines (from /admin/models) and the rest, which are
    its HTTP front ends (with the supervisor or, with one front end, the control plane)."""
    headers = {"Authorization": f"Bearer {BENCH_ADMIN_KEY}"}
    models = httpx.get(f"{url}/admin/models", headers=headers, timeout=10).json()["models"]
    engines = [m["engine_pid"] for m in models if m.get("engine_pid")]
    return {"engines": engines, "front_ends": [p for p in descendants(pid) if p not in engines]}


def ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    return False
