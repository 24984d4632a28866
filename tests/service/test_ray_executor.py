"""service/jobs/ray_executor.py against a real Ray: a local head (`ray start --head --block`, two CPUs,
the dashboard on a free loopback port) runs real `charlm train` submissions, one to the end, one
interrupted midway, one left running for abandon() to stop as a restarted server would, one that
charlm refuses.

Needs the `ray` extra (`pip install -e '.[ray]'`); skipped without it, except under CI=true. About
half a minute on a 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from charlm.checkpoint import load_model
from service.jobs.executors import TrainCommand
from service.jobs.service import make_executor
from tests.deploy.helpers import REPO
from tests.helpers import make_corpus, missing_tool, stop_group, wait_until
from tests.service.helpers import free_port
from tests.service.training import API_KEY, ENDED, TINY_JOB, create_job, events, training_server, upload, wait_for

pytestmark = pytest.mark.ray
TINY = {"max_iters": 30, "eval_interval": 10, "eval_iters": 2, "batch_size": 4, "n_layer": 1, "n_head": 2,
        "n_embd": 32, "block_size": 16, "sample_chars": 20}
RUN_S = 180  # a bound for a hang, not a measure: a run takes seconds


def ray_binary() -> Path:
    """Ray's `ray` command beside this Python (the `ray` extra), failing under CI=true without it."""
    beside = Path(sys.executable).parent / "ray"
    if not beside.is_file():
        missing_tool("Ray is not installed (the `ray` extra: pip install -e '.[ray]')")
    return beside


def head_command(directory: str) -> list[str]:
    # Ray's fixed defaults would collide with any other Ray. The agent's HTTP port is the kernel's
    # choice at bind time (0): a port chosen here and bound seconds later can be taken meanwhile by
    # any of Ray's own connections, and an agent that cannot bind stays up without HTTP, so that
    # every submission answers "No available agent" (seen once in CI).
    ports = {"--port": free_port(), "--dashboard-port": free_port(), "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": 0}
    return [str(ray_binary()), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--disable-usage-stats", "--object-store-memory", str(200 * 2**20), "--temp-dir", directory,
            *(str(item) for pair in ports.items() for item in pair)]


def head_env() -> dict[str, str]:
    return {
        **os.environ,
        # The submissions' `charlm` is this Python's, running this checkout's code.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        # A token in ~/.ray left by any earlier local Ray turns token authentication on; this
        # throwaway head on the loopback needs none.
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }


def dashboard_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def runs_a_job(url: str) -> bool:
    """Whether the head runs a submission (`true`) to its end: the dashboard answering is not enough,
    as its job agent starts later."""
    try:
        submitted = httpx.post(f"{url}/api/jobs/", json={"entrypoint": "true"}, timeout=30)
        if submitted.status_code != 200:
            return False
        ref = submitted.json()["submission_id"]

        def status() -> str:
            return str(httpx.get(f"{url}/api/jobs/{ref}", timeout=10).json()["status"])

        ended = wait_until(lambda: status() in ("SUCCEEDED", "FAILED", "STOPPED"), timeout=60, interval=0.5)
        return ended and status() == "SUCCEEDED"
    except httpx.HTTPError:
        return False


def ray_logs(directory: str) -> str:
    """The tails of the head's own output and its agent's log, for a head that did not come up."""
    paths = [Path(directory) / "head.log", *Path(directory).glob("session_latest/logs/dashboard_agent.log")]
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-2000:]}" for path in paths if path.exists())


def stop_head(head: subprocess.Popen[bytes]) -> None:
    """`ray start --block` stops every process it started on SIGTERM (where `ray stop` would stop every
    Ray on the machine); its process group is killed if not."""
    stop_group(head, signal.SIGTERM, 60)


def start_head(directory: str) -> tuple[subprocess.Popen[bytes], str | None]:
    """A head and its dashboard's address, or None for an address when it did not come up whole."""
    command = head_command(directory)
    url = f"http://127.0.0.1:{command[command.index('--dashboard-port') + 1]}"
    with (Path(directory) / "head.log").open("w") as out:
        head = subprocess.Popen(command, env=head_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    up = wait_until(lambda: dashboard_answers(url) or head.poll() is not None, timeout=120)
    return head, url if up and head.poll() is None and runs_a_job(url) else None


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray head's dashboard address, on a head that has run a job. A head that does not come
    up (a port taken between its choice and its use) is replaced, twice at most."""
    failures = []
    for _ in range(3):
        directory = tempfile.mkdtemp(prefix="charlm-ray-")  # short: Ray's socket paths must fit 107 bytes
        head, url = start_head(directory)
        try:
            if url is not None:
                yield url
                return
            failures.append(ray_logs(directory))
        finally:
            stop_head(head)
            shutil.rmtree(directory, ignore_errors=True)
    pytest.fail("a local Ray head did not come up in 3 tries:\n" + "\n".join(failures))


@pytest.fixture()
def executor(ray_address: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CHARLM_RAY_ADDRESS", ray_address)
    monkeypatch.setenv("CHARLM_TRAIN_CPUS", "1")
    return make_executor("ray")


def train_command(data_dir: Path, job_id: str, **settings: object) -> TrainCommand:
    """What the scheduler would start: every path absolute, under the data dir."""
    text = data_dir / "files" / "file-abc"
    if not text.exists():
        text.parent.mkdir(parents=True)
        text.write_text(make_corpus(), encoding="utf-8")
    job = data_dir / "jobs" / job_id
    sets = [item for key, value in {**TINY, **settings}.items() for item in ("--set", f"{key}={value}")]
    args = ["train", "--data", str(text), "--out", str(job / "model"), "--preset", "gpt-tiny", *sets,
            "--no-progress", "--device", "cpu"]
    return TrainCommand(job_id, args, {"CHARLM_JOB_ID": job_id}, job / "train.log")


def ended(run: Any) -> int | None:
    assert wait_until(lambda: run.poll() is not None, timeout=RUN_S, interval=0.5)
    return run.poll()


def started_training(run: Any, model: Path) -> None:
    """Once the run's first checkpoint is written: the trainer has set its SIGINT handler."""
    assert wait_until(lambda: (model / "model.safetensors").exists() or run.poll() is not None, timeout=RUN_S)
    assert run.poll() is None


def test_a_run_trains_a_loadable_model_and_its_log_is_copied(executor, tmp_path):
    command = train_command(tmp_path, "ftjob-done")
    run = executor.start(command)
    assert run.ref.startswith("ftjob-done-")
    assert ended(run) == 0, command.log_path.read_text()
    loaded = load_model(tmp_path / "jobs" / "ftjob-done" / "model")
    assert loaded.model.architecture == "gpt" and len(loaded.vocab) > 0
    log = command.log_path.read_text()
    assert str(tmp_path / "jobs" / "ftjob-done" / "model") in log  # the trainer's output, copied from Ray
    assert log.endswith(f"Ray job {run.ref} SUCCEEDED: Job finished successfully.\n")


def test_a_run_charlm_refuses_ends_with_charlms_own_status(executor, tmp_path):
    command = train_command(tmp_path, "ftjob-bad")
    command.args[command.args.index("--data") + 1] = str(tmp_path / "files" / "missing")
    run = executor.start(command)
    assert ended(run) == 2, command.log_path.read_text()
    assert "FAILED" in command.log_path.read_text().splitlines()[-1]


def test_an_interrupted_run_checkpoints_and_ends_with_130(executor, tmp_path):
    command = train_command(tmp_path, "ftjob-stop", max_iters=100_000)
    model = tmp_path / "jobs" / "ftjob-stop" / "model"
    run = executor.start(command)
    started_training(run, model)
    run.interrupt()
    assert ended(run) == 130, command.log_path.read_text()
    assert "STOPPED" in command.log_path.read_text().splitlines()[-1]
    assert (model / "training_state.pt").exists()  # resumable: it stopped on SIGINT, not SIGKILL
    run.interrupt()  # a run that ended: nothing to stop, no error


def test_abandon_stops_a_run_an_earlier_server_left_and_ignores_others(executor, ray_address, tmp_path):
    command = train_command(tmp_path, "ftjob-left", max_iters=100_000)
    run = executor.start(command)
    started_training(run, tmp_path / "jobs" / "ftjob-left" / "model")
    restarted = make_executor("ray")  # a new server's executor, knowing only the stored ref
    restarted.abandon("ftjob-left-00000000", "ftjob-left")  # unknown to Ray
    restarted.abandon("4242", "ftjob-left")  # the local executor's ref
    restarted.abandon(run.ref, "ftjob-other")  # another job's: left alone
    assert run.poll() is None
    restarted.abandon(run.ref, "ftjob-left")  # returns once the submission has ended
    assert run.poll() == 130


def test_an_unreachable_ray_is_a_clear_error(tmp_path, monkeypatch):
    ray_binary()
    address = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CHARLM_RAY_ADDRESS", address)
    executor = make_executor("ray")  # reaches Ray only when a run starts: the server starts without it
    with pytest.raises(RuntimeError, match=f"Ray at {address} cannot be reached"):
        executor.start(train_command(tmp_path, "ftjob-nowhere"))
    with pytest.raises(RuntimeError, match=f"Ray at {address} cannot be reached"):
        executor.abandon("ftjob-nowhere-00000000", "ftjob-nowhere")


def test_settings_come_from_the_environment(monkeypatch):
    ray_binary()
    monkeypatch.setenv("CHARLM_RAY_ADDRESS", "http://ray-head:8265")
    monkeypatch.setenv("CHARLM_TRAIN_GPUS", "1")
    monkeypatch.setenv("CHARLM_TRAIN_CPUS", "4")
    executor = make_executor("ray")
    assert (executor.address, executor.settings.train_gpus, executor.settings.train_cpus) == \
        ("http://ray-head:8265", 1, 4)
    monkeypatch.setenv("CHARLM_TRAIN_CPUS", "0")
    with pytest.raises(ValueError, match="train_cpus"):
        make_executor("ray")


def test_a_job_runs_on_ray_from_upload_to_served_model(ray_address, tiny_models, tmp_path, monkeypatch):
    """The whole service with CHARLM_TRAIN_EXECUTOR=ray: the run's events come back through the shared
    data directory, and its model is published and served as a local run's is."""
    monkeypatch.setenv("CHARLM_RAY_ADDRESS", ray_address)
    with training_server(tiny_models, tmp_path, train_executor="ray") as (base, _, _):
        text = upload(base, make_corpus()).json()["id"]
        job_id = create_job(base, text, hyperparameters={**TINY_JOB, "max_iters": 40}).json()["id"]
        done = wait_for(base, job_id, ENDED, timeout=RUN_S)
        assert done["status"] == "succeeded", done
        said = [e["message"] for e in events(base, job_id)]
        assert "Run started (ray)" in said and any(m.startswith("Training started") for m in said)
        assert any(m.startswith("Sample at step 40") for m in said)
        answer = httpx.post(f"{base}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                            json={"model": done["fine_tuned_model"], "prompt": "the ", "max_tokens": 8})
        assert answer.status_code == 200 and len(answer.json()["choices"][0]["text"]) == 8
