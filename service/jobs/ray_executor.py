"""A job's `charlm train` as a Ray job, submitted to a Ray cluster's dashboard (Ray Jobs' HTTP API).

start() submits `charlm <args>` with the run's CPUs, GPUs and environment; the submission id (the job
id and a random suffix) is the run's ref. poll() reads the submission's status and appends what Ray's
log of it gained to the run's log file. interrupt() and kill() ask Ray to stop it: SIGINT (the
trainer checkpoints and exits 130), SIGKILL after STOP_WAIT_S. Every path in the command is under the
server's data dir, which every Ray node must see at the same path (shared storage).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray.exceptions import RayError
from ray.job_submission import JobStatus, JobSubmissionClient

from service.jobs.executors import TrainCommand

logger = logging.getLogger(__name__)
# Between the stop signal and SIGKILL: the trainer finishes its iteration and writes a checkpoint,
# which for a large model on slow shared storage takes a while (Ray's own default is 3 s).
STOP_WAIT_S = 120
# SIGINT is the signal `charlm train` has always stopped gracefully on (the local executor sends it too).
STOP_SIGNAL = "SIGINT"
EXIT_STATUS = {JobStatus.SUCCEEDED: 0, JobStatus.STOPPED: 130, JobStatus.FAILED: 1}
NOT_FOUND = "status code 404"  # how the job SDK words a submission it does not know


class RaySettings(BaseSettings):
    """Where the Ray cluster's dashboard answers, and what one run reserves there."""

    model_config = SettingsConfigDict(env_prefix="CHARLM_")

    ray_address: str = "http://127.0.0.1:8265"
    train_gpus: float = Field(0, ge=0)
    train_cpus: float = Field(1, gt=0)


@contextlib.contextmanager
def reaching(address: str) -> Iterator[None]:
    """Ray's errors as RuntimeErrors that name the cluster's address."""
    try:
        yield
    except OSError as exc:  # requests' errors and the SDK's ConnectionError alike
        raise RuntimeError(f"Ray at {address} cannot be reached ({exc}); CHARLM_RAY_ADDRESS names the "
                           "dashboard of the cluster, e.g. http://ray-head:8265") from exc
    except (RayError, RuntimeError) as exc:  # authentication, and any answer other than 200
        raise RuntimeError(f"Ray at {address}: {exc}") from exc


def stop(client: JobSubmissionClient, address: str, ref: str) -> bool:
    """Ask Ray to stop submission `ref`; whether it was still running (an unknown one was not)."""
    with reaching(address):
        try:
            return bool(client.stop_job(ref))
        except RuntimeError as exc:
            if NOT_FOUND in str(exc):
                return False
            raise


def status_of(client: JobSubmissionClient, address: str, ref: str) -> JobStatus | None:
    """Submission `ref`'s status; None for one Ray does not know."""
    with reaching(address):
        try:
            return client.get_job_status(ref)
        except RuntimeError as exc:
            if NOT_FOUND in str(exc):
                return None
            raise


class RayRun:
    """One submission. poll() copies Ray's log as it grows, so that the job's log reads as it would
    under the local executor."""

    def __init__(self, client: JobSubmissionClient, address: str, ref: str, log_path: Path):
        self.client, self.address, self.ref, self.log_path = client, address, ref, log_path
        self.copied = 0  # characters of Ray's log already appended to log_path
        self.exit_status: int | None = None

    def poll(self) -> int | None:
        """The exit status once Ray reports the submission ended; None while it runs, and while Ray
        does not answer (a dashboard restarting must not fail a training run that goes on)."""
        if self.exit_status is not None:
            return self.exit_status
        try:
            with reaching(self.address):
                info = self.client.get_job_info(self.ref)
        except RuntimeError as exc:
            if NOT_FOUND in str(exc):  # the head restarted without its job table: the run is gone
                return self.ended(1, f"Ray no longer knows submission {self.ref}")
            logger.warning("run %s: %s; asking again at the next poll", self.ref, exc)
            return None
        self.copy_log()
        status = EXIT_STATUS.get(info.status)
        if status is None:
            return None
        if info.status == JobStatus.FAILED and info.driver_exit_code:
            status = info.driver_exit_code  # charlm's own status (2: bad arguments, say), when Ray has it
        message = (info.message or "").partition("\n")[0]  # a failure's message repeats the log's tail
        return self.ended(status, f"Ray job {self.ref} {info.status.value}: {message}")

    def interrupt(self) -> None:
        stop(self.client, self.address, self.ref)

    def kill(self) -> None:
        """Ray's API has no immediate kill: this is a stop too, whose SIGKILL comes STOP_WAIT_S later."""
        stop(self.client, self.address, self.ref)

    def copy_log(self) -> None:
        try:
            with reaching(self.address):
                text = self.client.get_job_logs(self.ref)
        except RuntimeError as exc:
            logger.warning("run %s: its log was not copied this time: %s", self.ref, exc)
            return
        self.append(text[self.copied:])
        self.copied = len(text)

    def ended(self, status: int, message: str) -> int:
        self.append(f"{message}\n")
        logger.info("run %s ended with status %d: %s", self.ref, status, message)
        self.exit_status = status
        return status

    def append(self, text: str) -> None:
        if text:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(text)


class RayExecutor:
    """`charlm train …` as a Ray job. The command `charlm` must be installed on the Ray nodes (the
    project's image as the cluster's image, say). Calls block on HTTP: the scheduler's thread makes
    them. start(), interrupt(), kill() and abandon() raise RuntimeError when Ray cannot be reached."""

    name = "ray"

    def __init__(self, settings: RaySettings):
        self.settings = settings
        self.address = settings.ray_address
        self._client: JobSubmissionClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> RayExecutor:
        """CHARLM_RAY_ADDRESS, CHARLM_TRAIN_GPUS and CHARLM_TRAIN_CPUS; Ray is reached at the first run."""
        return cls(RaySettings())

    def client(self) -> JobSubmissionClient:
        with self._lock:
            if self._client is None:
                with reaching(self.address):
                    self._client = JobSubmissionClient(self.address)
            return self._client

    def start(self, command: TrainCommand) -> RayRun:
        ref = f"{command.job_id}-{secrets.token_hex(4)}"  # unique per attempt; abandon() reads the job id
        cpus, gpus = self.settings.train_cpus, self.settings.train_gpus
        env = {
            "RAY_JOB_STOP_SIGNAL": STOP_SIGNAL, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),
            # Python sees the node's cores, not the run's share of them
            "OMP_NUM_THREADS": str(max(1, int(cpus))),
            **command.env,
        }
        command.log_path.parent.mkdir(parents=True, exist_ok=True)
        with reaching(self.address):
            self.client().submit_job(
                entrypoint=shlex.join(["charlm", *command.args]), submission_id=ref,
                entrypoint_num_cpus=cpus, entrypoint_num_gpus=gpus, runtime_env={"env_vars": env},
            )
        logger.info("job %s: submitted %s to Ray at %s (%g CPUs, %g GPUs)", command.job_id, ref, self.address,
                    cpus, gpus)
        return RayRun(self.client(), self.address, ref, command.log_path)

    def abandon(self, ref: str, job_id: str) -> None:
        """Stop the submission an earlier server left running, and wait until it has ended, so that
        the job's next run never trains into the same directory beside it."""
        if not ref.startswith(f"{job_id}-"):
            return  # not a submission of this job (a pid the local executor stored, say)
        client = self.client()
        if stop(client, self.address, ref):
            logger.warning("stopping Ray job %s of job %s, left by an earlier server", ref, job_id)
        deadline = time.monotonic() + STOP_WAIT_S + 30
        while time.monotonic() < deadline:  # a stop asked by the earlier server may still be under way
            status = status_of(client, self.address, ref)
            if status is None or status.is_terminal():
                return
            time.sleep(1)
        raise RuntimeError(f"Ray at {self.address}: submission {ref} still runs {STOP_WAIT_S + 30} s after "
                           "it was asked to stop")
