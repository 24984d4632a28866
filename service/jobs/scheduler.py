"""The one scheduler of a data directory: starts queued jobs (at most CHARLM_TRAIN_CONCURRENCY at
once), follows their runs, carries out cancel and pause, publishes finished models.

It runs in a thread of its own beside the control plane, where blocking calls (SQLite, an executor's
HTTP) cost the server nothing, and which the local runs' children are tied to: they die with it.
A lock file makes it the only one: a second server on the same data directory serves the API but
leaves the jobs to the first. After a restart (even a kill -9) a job that was running is queued
again, ahead of newer ones, and resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from service.jobs import runs
from service.jobs.executors import Executor, Run
from service.jobs.follow import follow
from service.jobs.store import Store, now

logger = logging.getLogger(__name__)
TICK_S = 0.25
RECOVERY_RETRY_S = 10.0  # after a failed recovery (a Ray cluster that does not answer, say)
LOCK_FILE = "scheduler.lock"


@dataclasses.dataclass
class Active:
    run: Run
    interrupted_at: float | None = None
    killed: bool = False


class Scheduler:
    def __init__(self, store: Store, settings: Any, executor: Executor, published: Callable[[str], None]):
        self.store, self.settings, self.executor = store, settings, executor
        self.published = published  # called with a new model's name; returns once the server serves it
        self.active: dict[str, Active] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock: IO[bytes] | None = None

    def start(self) -> bool:
        """Start scheduling, unless another server holds the data directory's lock."""
        self.lock = open(self.settings.data_dir / LOCK_FILE, "ab")  # noqa: SIM115 (held while serving)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another server schedules the jobs of %s; this one only answers about them",
                           self.settings.data_dir)
            self.lock.close()
            self.lock = None
            return False
        self.thread = threading.Thread(target=self._main, name="job-scheduler", daemon=True)
        self.thread.start()
        return True

    def stop(self) -> None:
        """Stop every run at a checkpoint (killed past the cancel timeout); their jobs resume at the next
        start."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        if self.lock is not None:
            self.lock.close()

    def _main(self) -> None:
        while not self._recovered():  # the jobs an earlier server left running come first
            if self.stopping.wait(RECOVERY_RETRY_S):
                return
        while not self.stopping.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # one bad tick must not end scheduling: logged, tried again
                logger.exception("job scheduler tick failed")
        self._shut_down()

    def _recovered(self) -> bool:
        try:
            self._recover()
        except Exception:  # a Ray cluster that does not answer, a database busy past its timeout
            logger.exception("the jobs an earlier server left could not be taken up; trying again in %g s",
                             RECOVERY_RETRY_S)
            return False
        return True

    def _recover(self) -> None:
        """The jobs an earlier server left running: its runs stopped (they die with it; a remote one is
        stopped here), then each job finished, paused, cancelled or queued again as it stood."""
        for job in self.store.jobs_in("running"):
            if job["run_ref"]:
                self.executor.abandon(job["run_ref"], job["id"])
            follow(self.store, job, runs.events_path(self.settings.data_dir, job["id"]))
            request = job["requested"]
            if runs.done_training(job, self.settings.data_dir, self.settings.models_dir):
                self._succeed(job)
            elif request == "cancel":
                self._end(job, "cancelled", "Job cancelled")
            elif request == "pause":
                self.store.move(job["id"], ("running",), "Job paused", status="paused", requested=None,
                                estimated_finish=None, run_ref=None)
            else:
                self.store.move(job["id"], ("running",), "The server restarted: the job resumes from its last "
                                "checkpoint", status="queued", run_ref=None, estimated_finish=None)

    def tick(self) -> None:
        for job_id, active in list(self.active.items()):
            job = self.store.job(job_id)
            assert job is not None
            follow(self.store, job, runs.events_path(self.settings.data_dir, job_id))
            self._carry_out_request(job, active)
            status = active.run.poll()
            if status is not None:
                job = self.store.job(job_id)
                assert job is not None
                follow(self.store, job, runs.events_path(self.settings.data_dir, job_id))
                self._finished(job, status)
                del self.active[job_id]  # only once its end is recorded: a failure above is tried again
        while len(self.active) < self.settings.train_concurrency and not self.stopping.is_set():
            queued = self.store.jobs_in("queued")
            if not queued:
                break
            self._start(queued[0])

    def _start(self, job: dict[str, Any]) -> None:
        data_dir = self.settings.data_dir
        if not self.store.move(job["id"], ("queued",), status="running", requested=None,
                               started_at=job["started_at"] or now()):
            return  # cancelled or paused meanwhile
        if runs.done_training(job, data_dir, self.settings.models_dir):  # a restart came between end and publish
            self._succeed(job)
            return
        try:
            command = runs.train_command(job, self.store, data_dir, self.settings)
            run = self.executor.start(command)
        except Exception as exc:
            logger.exception("job %s could not start", job["id"])
            self._end(job, "failed", None, error={"code": "start_failed", "message": f"the run could not start: {exc}"})
            return
        self.active[job["id"]] = Active(run)
        self.store.move(job["id"], ("running",), f"Run started ({self.executor.name})", run_ref=run.ref)

    def _carry_out_request(self, job: dict[str, Any], active: Active) -> None:
        if job["requested"] and active.interrupted_at is None:
            active.interrupted_at = time.monotonic()
            active.run.interrupt()
            self.store.add_event(job["id"], "info", "message", f"Stopping to {job['requested']}: a checkpoint first")
        elif active.interrupted_at is not None and not active.killed and \
                time.monotonic() - active.interrupted_at > self.settings.cancel_timeout_s:
            active.killed = True
            active.run.kill()
            self.store.add_event(job["id"], "warning", "message",
                                 f"The run did not stop in {self.settings.cancel_timeout_s:g} s: killed")

    def _finished(self, job: dict[str, Any], status: int) -> None:
        if status == 0:  # it reached its end before a cancel or pause could stop it: the model is done
            self._succeed(job)
        elif job["requested"] == "cancel":
            self._end(job, "cancelled", "Job cancelled")
        elif job["requested"] == "pause":
            self.store.move(job["id"], ("running",), "Job paused: resume it to continue from its checkpoint",
                            status="paused", requested=None, estimated_finish=None, run_ref=None)
        else:
            message = runs.failure_message(self.settings.data_dir, job["id"], status)
            self._end(job, "failed", None, error={"code": "training_failed", "message": message})

    def _succeed(self, job: dict[str, Any]) -> None:
        try:
            target = runs.publish_model(job, self.store, self.settings)
        except (OSError, ValueError) as exc:
            logger.exception("job %s: its model could not be published", job["id"])
            self._end(job, "failed", None, error={"code": "publish_failed", "message": str(exc)})
            return
        try:
            self.published(target.name)
        except Exception:  # the models watcher finds it at its next look
            logger.exception("job %s: the server did not reload its models", job["id"])
        self._end(job, "succeeded", f"The model is served as {target.name}", fine_tuned_model=target.name)

    def _end(self, job: dict[str, Any], status: str, message: str | None, **fields: Any) -> None:
        if "error" in fields:
            message = f"Job failed: {fields['error']['message']}"
        self.store.move(job["id"], ("running", "queued", "paused"), message, level="error" if "error" in fields
                        else "info", status=status, finished_at=now(), estimated_finish=None, requested=None,
                        run_ref=None, **fields)
        if status == "cancelled":  # a failed job's checkpoints stay, to look into or publish by hand
            runs.discard_model(self.settings.data_dir, job["id"])

    def _shut_down(self) -> None:
        for active in self.active.values():
            active.run.interrupt()
        deadline = time.monotonic() + self.settings.cancel_timeout_s
        for job_id, active in self.active.items():
            while active.run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if active.run.poll() is None:
                active.run.kill()
            job = self.store.job(job_id)
            if job is None:
                continue
            follow(self.store, job, runs.events_path(self.settings.data_dir, job_id))
            if active.run.poll() == 0:  # it reached its end meanwhile
                self._succeed(job)
            else:
                self.store.add_event(job_id, "info", "message", "The server is stopping: the job resumes from its "
                                     "checkpoint when it starts again")

