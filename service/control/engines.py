"""The control plane's handle on one model version's engine: started, closed, joined, watched.

`EngineProcess` starts an engine in a process of its own (`service.engine.process`), which loads
the model on the device and listens on a Unix socket for the front ends; the handle keeps a pipe
to it for its life (started or failed, close, cancel, ended) and notices if it dies.
`EngineThread` runs an engine in a thread of this process instead, on a model loaded here. Either
way the front ends reach the engine through their own clients (`service.frontend.engine_client`).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import signal
import threading
from pathlib import Path

from charlm.checkpoint import LoadedModel
from service.engine.engine import Engine, EngineClosed
from service.engine.forkserver import child_context
from service.engine.process import run
from service.engine.specs import EngineSpec, ModelInfo

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0  # loading and warming up a model (graphs captured, memory taken)
HANG_S = 10.0  # the default bound on an engine's silence, or on one step (CHARLM_ENGINE_HANG_S)


class EngineProcess:
    def __init__(self, spec: EngineSpec, hang_s: float = HANG_S):
        """Starts the process at once, so that several models load in parallel; `start` waits.
        A started engine that sends no pulse for `hang_s`, or whose step runs that long, is hung:
        it is killed, and fails like one that died."""
        self.name = spec.name
        self.hang_s = hang_s
        self.last_pulse = (0.0, 0.0, 0)  # the engine's latest (step_s, idle_s, load): `Engine.pulse`
        self._closing = False
        self.address: str | None = spec.address
        self.memory: dict[str, object] = {}
        self.info: ModelInfo | None = None
        self.failure: str | None = None  # why the process is gone, when it went unexpectedly
        self.engine: Engine | None = None
        context = child_context()  # forked from a server that never holds CUDA, sharing torch
        self._control, child_end = context.Pipe()
        self._process = context.Process(target=run, args=(spec, child_end), daemon=True, name=f"engine-{spec.name}")
        self._process.start()
        child_end.close()
        self._send_lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name=f"engine-watch-{spec.name}", daemon=True)

    def start(self) -> None:
        """Wait for the process to load and warm up; raises EngineClosed with its reason if it could not."""
        try:
            if not self._control.poll(START_TIMEOUT_S):
                self._process.kill()
                raise EngineClosed(f"the engine process did not start within {START_TIMEOUT_S:.0f} s")
            kind, *args = self._control.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise EngineClosed(f"the engine process exited with status {self._process.exitcode}") from None
        if kind == "failed":
            self._process.join(30)
            raise EngineClosed(args[0])
        self.memory, self.info = args[0], args[1]
        self._watcher.start()

    def close(self, finish_queued: bool = False) -> None:
        """Take no new requests; the active ones run to their end, the queued ones are cancelled or,
        with `finish_queued` (a replaced version), run too. The process ends when they are done."""
        self._closing = True
        self._send(("close", finish_queued))

    def cancel_all(self) -> None:
        self._send(("cancel_all",))

    def join(self, timeout: float | None = None) -> bool:
        # Wait on the process's sentinel and leave the reaping to the watcher: two threads reaping
        # one child race, and the loser (ECHILD) takes the dead process for a live one.
        if not multiprocessing.connection.wait([self._process.sentinel], timeout):
            return False
        if self._watcher.ident is None:  # never started: nobody else reaps it
            self._process.join()
            return True
        self._watcher.join(timeout)
        return not self._watcher.is_alive()

    def kill(self) -> None:
        self._process.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _send(self, message: tuple[object, ...]) -> None:
        try:
            with self._send_lock:
                self._control.send(message)
        except (OSError, ValueError):  # the process is gone; the watcher says so
            pass

    def pulse(self) -> tuple[float, float, int]:
        return self.last_pulse

    def _watch(self) -> None:
        """Until the process says it ended, dies, or hangs."""
        try:
            while True:
                if not self._control.poll(self.hang_s):
                    self._hung(f"it sent no sign of life for {self.hang_s:g} s")
                    return
                kind, *args = self._control.recv()
                if kind == "ended":
                    if not self._closing:  # its engine thread ended unasked: restarted like a death
                        self.failure = f"the engine of model {self.name} stopped unasked"
                        logger.error("%s", self.failure)
                    return
                if kind == "pulse":
                    self.last_pulse = (args[0], args[1], args[2])
                    if args[0] > self.hang_s:
                        self._hung(f"one step of its batch had run for {args[0]:.0f} s")
                        return
        except (EOFError, OSError):
            self._process.join(5)
            self.failure = f"the engine process of model {self.name} exited unexpectedly ({exit_reason(self._process)})"
            logger.error("%s", self.failure)

    def _hung(self, why: str) -> None:
        """Fail, then kill: the failure is said first, so that it is this one and not a death's."""
        self.failure = f"the engine of model {self.name} hung and was killed: {why}"
        logger.error("%s", self.failure)
        self._process.kill()  # SIGKILL ends a stopped process too
        self._process.join(5)


def exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"signal {-code}"
    return f"exit status {code}"


class EngineThread:
    """An engine in a thread of this process, on a model loaded here."""

    def __init__(self, engine: Engine, loaded: LoadedModel):
        self.name = engine.name
        self.engine: Engine | None = engine
        self.address: str | None = None
        self.info: ModelInfo | None = ModelInfo.of(loaded)
        self.failure: str | None = None  # an engine in a thread fails only at start (EngineClosed)
        self.pid: int | None = None

    @property
    def memory(self) -> dict[str, object]:
        assert self.engine is not None
        return self.engine.memory

    def start(self) -> None:
        assert self.engine is not None
        self.engine.start()

    def close(self, finish_queued: bool = False) -> None:
        assert self.engine is not None
        self.engine.close(finish_queued)

    def cancel_all(self) -> None:
        assert self.engine is not None
        self.engine.cancel_all()

    def join(self, timeout: float | None = None) -> bool:
        assert self.engine is not None
        return self.engine.join(timeout)

    def kill(self) -> None:
        self.cancel_all()

    def pulse(self) -> tuple[float, float, int]:
        assert self.engine is not None
        return self.engine.pulse()


EngineHandle = EngineProcess | EngineThread


def socket_path(directory: Path, serial: int) -> str:
    """Where engine number `serial` listens (a short path: Unix socket paths are limited)."""
    return str(directory / f"engine-{serial}.sock")
