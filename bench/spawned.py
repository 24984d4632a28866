"""`charlm serve` started for a benchmark: on a free loopback port, on the bundled models unless
told otherwise, stopped with SIGTERM afterwards."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


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
    command = [sys.executable, "-m", "charlm", "serve", "--port", str(port), "--log-level", "warning", *flags]
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


def ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    return False
