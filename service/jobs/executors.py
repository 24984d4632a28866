"""Where a job's `charlm train` runs: a child process here (`local`), or a Ray cluster (`ray`).

The scheduler knows only this interface. A run is found again after a restart by its `ref` (a pid,
a Ray submission id), stored with the job, so that a run the previous server left behind is stopped
before the job resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
NICENESS = 10  # training yields the CPU to serving, which answers people waiting
SECRET_VARIABLES = ("CHARLM_API_KEY", "CHARLM_ADMIN_KEY")  # never handed to a run
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """One `charlm train` run of a job."""

    job_id: str
    args: list[str]  # after `charlm`: ["train", "--data", ..., "--out", ...]
    env: dict[str, str]  # set for the run, besides the server's own environment
    log_path: Path  # the run's stdout and stderr


class Run(Protocol):
    ref: str  # how to find the run again after a restart

    def poll(self) -> int | None:
        """The exit status once the run ended, else None (130: it stopped when asked to)."""

    def interrupt(self) -> None:
        """Ask the run to checkpoint and stop (the trainer takes SIGINT and SIGTERM so)."""

    def kill(self) -> None:
        """Stop the run at once."""


class Executor(Protocol):
    name: str

    def start(self, command: TrainCommand) -> Run: ...

    def abandon(self, ref: str, job_id: str) -> None:
        """Stop a run an earlier server started for this job, if it still runs."""


class LocalRun:
    def __init__(self, process: subprocess.Popen[bytes]):
        self.process = process
        self.ref = str(process.pid)

    def poll(self) -> int | None:
        return self.process.poll()

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()


class LocalExecutor:
    """`python -m charlm train …` in a child process, niced, that dies with the server (Linux)."""

    name = "local"

    def start(self, command: TrainCommand) -> LocalRun:
        command.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(command.log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "charlm", *command.args], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=run_environment(command.env), preexec_fn=_as_child,
                start_new_session=True,  # a Ctrl-C at the server's terminal is the server's to handle
            )
        return LocalRun(process)

    def abandon(self, ref: str, job_id: str) -> None:
        try:
            pid = int(ref)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ValueError, OSError):
            return  # gone (or never a pid)
        if job_id.encode() in cmdline:  # the pid may have been reused by another process since
            logger.warning("stopping run %s of job %s, left by an earlier server", pid, job_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _as_child() -> None:
    """In the child before exec: niced, and killed when the server dies (even by kill -9), so that no
    orphaned run writes into a job that the next server resumes. Nothing is loaded here: the server
    has threads, whose locks (the dynamic loader's among them) a forked child must not wait on, so
    libc is loaded before."""
    os.nice(NICENESS)
    # Where the scheduler groups processes by session (Linux's autogroup), a nice counts only within
    # the session, and the run has one of its own: the session itself is niced too.
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write(str(NICENESS))
    if LIBC is not None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_environment(extra: dict[str, str]) -> dict[str, str]:
    """The server's environment without its keys, and the run's own settings."""
    return {**{k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}, **extra}
