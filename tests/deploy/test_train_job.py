"""deploy/kubernetes/tools/train-job.yaml: the Job validates against the Kubernetes schemas, writes to
the claim every overlay's servers read, runs as the servers do (no root, read-only root filesystem,
requests and limits), and each rule fails on a copy broken against it. Its container's script runs
here for real, in sh, on a tiny corpus: it trains under a hidden name and renames, refuses a name
already served, and on SIGTERM checkpoints, exits 130, and is resumed by the Job's next pod.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from charlm.checkpoint import load_model
from tests.deploy import kubernetes as k8s
from tests.deploy.helpers import REPO
from tests.helpers import make_corpus, wait_until

TRAINING = ["--preset", "gpt-tiny", "--device", "cpu", "--set", "eval_interval=10", "--set", "eval_iters=2",
            "--set", "batch_size=4"]  # training settings only: a resumed run refuses model settings


@pytest.fixture(scope="module")
def job() -> k8s.Object:
    return yaml.safe_load(k8s.TRAIN_JOB.read_text())


@pytest.mark.parametrize("overlay", k8s.OVERLAYS, ids=[path.name for path in k8s.OVERLAYS])
def test_the_job_writes_where_every_overlays_servers_read(job, overlay):
    rendered = k8s.render(overlay)
    assert k8s.served_claims(rendered) == {"charlm-models"}
    assert k8s.train_job_problems(job, rendered) == []


def test_the_job_runs_as_the_servers_do(job):
    assert k8s.security_problems([job]) == []


BREAKS = {  # rule -> (field, broken value, words of the problem it must report)
    "claim": ("spec.template.spec.volumes.0.persistentVolumeClaim.claimName", "charlm-scratch",
              "writes to claim charlm-scratch, not ['charlm-models']"),
    "read-only": ("spec.template.spec.containers.0.volumeMounts.0.readOnly", True, "read-only"),
    "models dir": ("spec.template.spec.containers.0.env.2.value", "/elsewhere", "MODELS_DIR /elsewhere is not"),
    "ttl": ("spec.ttlSecondsAfterFinished", None, "never deleted"),
    "root": ("spec.template.spec.securityContext.runAsNonRoot", None, "may run as root"),
}


@pytest.mark.parametrize("rule", list(BREAKS))
def test_each_job_rule_fails_on_a_copy_broken_against_it(job, rule):
    field, value, complaint = BREAKS[rule]
    servers = k8s.render(k8s.KUBERNETES / "overlays" / "cpu")
    (copy,) = k8s.broken([job], "Job", field, value)
    problems = k8s.train_job_problems(copy, servers) + k8s.security_problems([copy])
    assert any(complaint in problem for problem in problems), problems


def run_script(job: k8s.Object, tmp_path: Path, model: str, *settings: str) -> subprocess.Popen[str]:
    """The Job's container command in sh here: MODELS_DIR and DATA_DIR under tmp_path, `charlm` this
    checkout's, the Job's args replaced by tiny ones."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    text = tmp_path / "data" / "my.txt"
    if not text.exists():
        text.parent.mkdir()
        text.write_text(make_corpus(), encoding="utf-8")
    env = {**os.environ, **k8s.env(container), "MODEL": model, "TEXT": text.name,
           "MODELS_DIR": str(tmp_path / "models"), "DATA_DIR": str(text.parent), "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [*TRAINING, *(item for setting in settings for item in ("--set", setting))]
    return subprocess.Popen([*container["command"], *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_the_script_trains_under_a_hidden_name_then_refuses_that_name_again(job, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    first = run_script(job, tmp_path, "tiny", "max_iters=20")
    output = first.communicate(timeout=240)[0]
    assert first.returncode == 0, output
    assert [path.name for path in models.iterdir()] == ["tiny"]  # renamed: no hidden run left behind
    assert load_model(models / "tiny").model.architecture == "gpt"
    again = run_script(job, tmp_path, "tiny", "max_iters=20")
    assert again.communicate(timeout=60)[0].strip().endswith("exists: give the model another name")
    assert again.returncode == 2  # the Job's podFailurePolicy fails it at once


def test_sigterm_checkpoints_and_the_next_pod_resumes(job, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    hidden = models / ".training-tiny"
    first = run_script(job, tmp_path, "tiny", "max_iters=100000")
    assert wait_until(lambda: (hidden / "model.safetensors").exists() or first.poll() is not None, timeout=240)
    first.send_signal(signal.SIGTERM)  # what the kubelet sends PID 1 when the pod is evicted
    output = first.communicate(timeout=240)[0]
    assert first.returncode == 130, output
    assert (hidden / "training_state.pt").exists() and not (models / "tiny").exists()

    reached = json.loads((hidden / "metrics.jsonl").read_text().splitlines()[-1])["iter"]
    second = run_script(job, tmp_path, "tiny", f"max_iters={reached + 20}")  # the Job's args, bounded here
    output = second.communicate(timeout=240)[0]
    assert second.returncode == 0, output
    evaluated = [json.loads(line)["iter"] for line in (models / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert evaluated[0] == 0 and evaluated[-1] == reached + 20  # one run, continued: not begun again
