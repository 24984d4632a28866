"""The scheduler's bookkeeping at the edges a server can die on, with real runs of charlm train and no
HTTP: a run that ended before its server did is published by the next one, never trained again; a
publish cut between its two renames is finished; a pause or cancel that came too late leaves the
finished model; a half line a killed run left in its events file costs no event of the next run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from charlm.checkpoint import load_model
from service.jobs import runs
from service.jobs.creation import create_job
from service.jobs.executors import LocalExecutor
from service.jobs.files import save_upload
from service.jobs.publish import _describe
from service.jobs.scheduler import Scheduler
from service.jobs.store import Store
from service.settings import Settings
from tests.helpers import make_corpus
from tests.service.training import TINY_JOB
from training.events import EventLog


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Store, Settings]:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", training=True, device="cpu")
    settings.models_dir.mkdir()
    return Store(settings.data_dir), settings


def finished_job(store: Store, settings: Settings, requested: str | None = None) -> dict[str, Any]:
    """A job whose run reached its end, as a server that died right after would have left it."""
    text = save_upload(store, settings.data_dir, 10**9, "t.txt", "fine-tune", make_corpus().encode())
    row = create_job(store, settings, {"model": "gpt-tiny", "training_file": text["id"],
                                       "hyperparameters": {**TINY_JOB, "max_iters": 20}}, None)
    assert store.move(row["id"], ("queued",), status="running", requested=requested, run_ref="1")
    command = runs.train_command(store.job(row["id"]), store, settings.data_dir, settings)
    ran = subprocess.run([sys.executable, "-m", "charlm", *command.args], capture_output=True, text=True,
                         env={**os.environ, **command.env})
    assert ran.returncode == 0, ran.stderr
    job = store.job(row["id"])
    assert job is not None
    return job


def scheduler(store: Store, settings: Settings) -> Scheduler:
    return Scheduler(store, settings, LocalExecutor(), published=lambda name: None)


def test_a_run_that_ended_before_a_restart_is_published_by_the_next_server(setup):
    store, settings = setup
    job = finished_job(store, settings)
    scheduler(store, settings)._recover()
    done = store.job(job["id"])
    assert done is not None and done["status"] == "succeeded", done
    model = load_model(settings.models_dir / done["fine_tuned_model"])
    assert model.info["training"]["iterations_run"] == 20
    assert not runs.model_path(settings.data_dir, job["id"]).exists()


def test_a_publish_cut_between_its_renames_is_finished_not_trained_again(setup):
    store, settings = setup
    job = finished_job(store, settings)
    trained = runs.model_path(settings.data_dir, job["id"])
    _describe(trained, job, None)
    os.replace(trained, settings.models_dir / f".{job['plan']['model_name']}.publishing")  # then the crash
    store.move(job["id"], ("running",), status="queued")
    scheduler(store, settings).tick()
    done = store.job(job["id"])
    assert done is not None and done["status"] == "succeeded" and done["fine_tuned_model"]
    assert (settings.models_dir / done["fine_tuned_model"] / "model.safetensors").exists()
    assert [p.name for p in settings.models_dir.iterdir()] == [done["fine_tuned_model"]]


@pytest.mark.parametrize("requested", ["pause", "cancel"])
def test_a_pause_or_cancel_too_late_for_the_run_keeps_its_model(setup, requested):
    store, settings = setup
    job = finished_job(store, settings, requested=requested)
    scheduler(store, settings)._finished(job, 0)
    done = store.job(job["id"])
    assert done is not None and done["status"] == "succeeded"


def test_a_failed_publish_keeps_the_trained_model(setup):
    store, settings = setup
    job = finished_job(store, settings)
    shutil.copytree(runs.model_path(settings.data_dir, job["id"]), settings.models_dir / job["plan"]["model_name"])
    scheduler(store, settings)._finished(job, 0)  # the name is taken by a directory no job made
    done = store.job(job["id"])
    assert done is not None and done["status"] == "failed" and done["error"]["code"] == "publish_failed"
    assert (runs.model_path(settings.data_dir, job["id"]) / "model.safetensors").exists()


def test_a_half_line_left_by_a_killed_run_does_not_swallow_the_next_runs_first_event(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "progress", "step": 1')  # killed mid-write
    log = EventLog(events)
    log.emit("start", step=0)
    log.close()
    lines = events.read_text().splitlines()
    assert lines[0] == '{"type": "progress", "step": 1' and '"start"' in lines[1]
