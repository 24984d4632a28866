"""/v1/fine_tuning/jobs: planned by training's own checks, run by `charlm train` in a child process,
followed through events and checkpoints, cancelled and paused at a checkpoint, published whole and
served; the openai client drives the whole of it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from charlm.checkpoint import load_model
from tests.helpers import make_corpus
from tests.service.training import (
    ADMIN,
    ADMIN_KEY,
    API_KEY,
    TINY_JOB,
    create_job,
    events,
    job,
    training_server,
    upload,
    wait_for,
    wait_for_event,
)

ENDLESS = {**TINY_JOB, "max_iters": 1_000_000}


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    with training_server(tiny_models, tmp_path_factory.mktemp("jobs"), cancel_timeout_s=20) as running:
        yield running


@pytest.fixture(scope="module")
def text_id(server) -> str:
    return str(upload(server[0], make_corpus(seed=5)).json()["id"])


def test_the_openai_client_trains_a_model_and_generates_from_it(server, text_id):
    base, models, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=ADMIN_KEY, max_retries=0)
    uploaded = client.files.create(file=("lines.txt", make_corpus(seed=6).encode()), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(model="gpt-tiny", training_file=uploaded.id, suffix="lines", seed=7,
                                             hyperparameters={"n_epochs": 1}, extra_body={})
    assert created.status == "queued" and created.seed == 7 and created.hyperparameters.n_epochs == 1
    with pytest.raises(openai.BadRequestError, match="n_epochs or max_iters, not both"):
        client.fine_tuning.jobs.create(model="gpt-tiny", training_file=uploaded.id,
                                       hyperparameters={"n_epochs": 1, "max_iters": 5})  # type: ignore[typeddict-unknown-key]
    done = client.fine_tuning.jobs.retrieve(created.id)
    while done.status not in ("succeeded", "failed", "cancelled"):
        done = client.fine_tuning.jobs.retrieve(created.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"lines-{created.id.removeprefix('ftjob-')[:8]}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at
    assert created.id in [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    messages = [e.message for e in client.fine_tuning.jobs.list_events(created.id, limit=100)]
    assert any(m.startswith("Training started") for m in messages) and any("served as" in m for m in messages)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(created.id))
    assert checkpoints and checkpoints[0].metrics.valid_loss is not None
    assert checkpoints[0].step_number >= checkpoints[-1].step_number  # newest first
    served = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0)
    reply = served.completions.create(model=done.fine_tuned_model, prompt="the ", max_tokens=20, seed=1)
    assert len(reply.choices[0].text) == 20
    card = (models / done.fine_tuned_model / "README.md").read_text()
    assert created.id in card and "lines.txt" in card


def test_a_served_model_continues_training_on_text_in_its_alphabet(server, text_id):
    base, models, _ = server
    created = create_job(base, text_id, model="tiny-gpt", hyperparameters={"max_iters": 20, "eval_interval": 10})
    assert created.status_code == 200, created.text
    done = wait_for(base, created.json()["id"], ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done
    tuned, base_model = load_model(models / done["fine_tuned_model"]), load_model(models / "tiny-gpt")
    assert tuned.vocab.chars == base_model.vocab.chars and tuned.info["training"]["iterations_run"] == 20
    foreign = upload(base, make_corpus() + "Ω§").json()["id"]
    refused = create_job(base, foreign, model="tiny-gpt")
    assert refused.status_code == 400 and "'Ω'" in refused.json()["error"]["message"]
    assert refused.json()["error"]["param"] == "training_file"


@pytest.mark.parametrize(("fields", "status", "param"), [
    ({"model": "gpt-enormous"}, 404, "model"),
    ({"hyperparameters": {"max_iters": 0}}, 400, "hyperparameters.max_iters"),
    ({"hyperparameters": {"n_layers": 2}}, 400, "hyperparameters.n_layers"),
    ({"hyperparameters": {"block_size": 100000}}, 400, "training_file"),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, 400, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"seq_len": [1]}}, 400, "hyperparameters"),
    ({"suffix": "../x"}, 400, "suffix"),
    ({"validation_file": "file-nope"}, 400, "validation_file"),
    ({"method": {"type": "dpo"}}, 400, "method.type"),
    ({"integrations": [{"type": "wandb"}]}, 400, "integrations"),
    ({"unknown": 1}, 400, "unknown"),
    ({"hyperparameters": {"n_embd": 2**40, "n_head": 1}}, 400, "hyperparameters.n_embd"),  # never built
    ({"hyperparameters": {"n_layer": 10**9}}, 400, "hyperparameters.n_layer"),
    ({"hyperparameters": {"max_iters": 10**30}}, 400, "hyperparameters.max_iters"),
    ({"hyperparameters": {"sample_chars": 10**9}}, 400, "hyperparameters.sample_chars"),
])
def test_a_bad_job_is_refused_naming_the_field(server, text_id, fields, status, param):
    body = {"model": "gpt-tiny", "training_file": text_id, **fields}
    answer = httpx.post(f"{server[0]}/v1/fine_tuning/jobs", headers=ADMIN, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param, answer.text


def test_cancel_checkpoints_stops_and_publishes_nothing(server, text_id):
    base, models, data = server
    job_id = create_job(base, text_id, hyperparameters=ENDLESS).json()["id"]
    wait_for_event(base, job_id, "Step 20:")
    cancelled = httpx.post(f"{base}/v1/fine_tuning/jobs/{job_id}/cancel", headers=ADMIN)
    assert cancelled.status_code == 200
    assert wait_for(base, job_id, ("succeeded", "failed", "cancelled"))["status"] == "cancelled"
    said = [e["message"] for e in events(base, job_id)]
    assert "Stopping to cancel: a checkpoint first" in said
    assert said[-2].startswith("Training stopped when asked") and said[-1] == "Job cancelled"
    assert not (data / "jobs" / job_id / "model").exists()
    assert not [p for p in models.iterdir() if job_id.removeprefix("ftjob-")[:8] in p.name]
    again = httpx.post(f"{base}/v1/fine_tuning/jobs/{job_id}/cancel", headers=ADMIN)
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]


def test_pause_and_resume_continue_from_the_checkpoint(server, text_id):
    base, models, _ = server
    job_id = create_job(base, text_id, hyperparameters={**TINY_JOB, "max_iters": 400}).json()["id"]
    wait_for_event(base, job_id, "Step 20:")
    assert httpx.post(f"{base}/v1/fine_tuning/jobs/{job_id}/pause", headers=ADMIN).status_code == 200
    paused = wait_for(base, job_id, ("paused",))
    assert paused["estimated_finish"] is None and 0 < paused["charlm"]["step"] < 400
    resumed = httpx.post(f"{base}/v1/fine_tuning/jobs/{job_id}/resume", headers=ADMIN)
    assert resumed.status_code == 200 and resumed.json()["status"] in ("queued", "running")
    done = wait_for(base, job_id, ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done
    starts = [e["data"]["step"] for e in events(base, job_id) if e["message"].startswith("Training ")
              and e["data"] and "total_steps" in e["data"]]
    assert starts[0] == 0 and starts[1] > 0  # resumed where it stopped, not from the beginning
    metrics = (models / done["fine_tuned_model"] / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["iter"] for line in metrics]
    assert steps == sorted(set(steps)) and steps[-1] == 400
    assert httpx.post(f"{base}/v1/fine_tuning/jobs/{job_id}/resume", headers=ADMIN).status_code == 409


def test_the_event_stream_replays_from_last_event_id_and_ends_with_the_job(server, text_id):
    base = server[0]
    job_id = create_job(base, text_id, hyperparameters={**TINY_JOB, "max_iters": 40}).json()["id"]
    url = f"{base}/v1/fine_tuning/jobs/{job_id}/events"
    with httpx.Client(headers=ADMIN, timeout=120) as client, \
            connect_sse(client, "GET", url, params={"stream": "true"}) as source:
        streamed = list(source.iter_sse())
    assert streamed[-1].event == "end" and json.loads(streamed[-1].data)["status"] == "succeeded"
    ids = [int(s.id) for s in streamed[:-1]]
    assert ids == sorted(ids) and len(ids) == len(events(base, job_id))
    assert any(json.loads(s.data)["type"] == "metrics" and "valid_loss" in json.loads(s.data)["data"]
               for s in streamed[:-1])
    middle = ids[len(ids) // 2]
    with httpx.Client(headers={**ADMIN, "Last-Event-ID": str(middle)}, timeout=60) as client, \
            connect_sse(client, "GET", url, params={"stream": "true"}) as source:
        replayed = [int(s.id) for s in source.iter_sse() if s.event != "end"]
    assert replayed == [i for i in ids if i > middle]


def test_the_queue_is_bounded_and_a_waiting_job_streams_heartbeats(tiny_models, tmp_path):
    with training_server(tiny_models, tmp_path, max_queued_jobs=1, sse_keepalive_s=0.2) as (base, _, _):
        text = upload(base, make_corpus()).json()["id"]
        running = create_job(base, text, hyperparameters=ENDLESS).json()["id"]
        wait_for(base, running, ("running",))
        waiting = create_job(base, text, hyperparameters=ENDLESS).json()["id"]
        full = create_job(base, text, hyperparameters=ENDLESS)
        assert full.status_code == 409 and "CHARLM_MAX_QUEUED_JOBS" in full.json()["error"]["message"]
        url = f"{base}/v1/fine_tuning/jobs/{waiting}/events"
        with httpx.stream("GET", url, params={"stream": "true"}, headers=ADMIN, timeout=30) as stream:
            lines = stream.iter_lines()
            seen = [next(lines) for _ in range(8)]  # its one event so far, then nothing but heartbeats
        assert seen.count(": keepalive") >= 2 and any(line.startswith("id: ") for line in seen)
        listed = httpx.get(f"{base}/v1/fine_tuning/jobs", params={"limit": 1}, headers=ADMIN).json()
        assert listed["has_more"] and len(listed["data"]) == 1
        older = httpx.get(f"{base}/v1/fine_tuning/jobs", params={"after": listed["data"][0]["id"]},
                          headers=ADMIN).json()
        assert [j["id"] for j in older["data"]] == [running] and not older["has_more"]


def test_no_key_reaches_a_job_log_event_or_model(server):
    base, models, data = server
    for top in (data, models):
        for path in top.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert ADMIN_KEY.encode() not in content and API_KEY.encode() not in content, path
    for row in httpx.get(f"{base}/v1/fine_tuning/jobs", params={"limit": 100}, headers=ADMIN).json()["data"]:
        assert ADMIN_KEY not in json.dumps(job(base, row["id"])) + json.dumps(events(base, row["id"]))


def test_paging_past_what_does_not_exist_is_a_clear_answer(server, text_id):
    base = server[0]
    missing = httpx.get(f"{base}/v1/fine_tuning/jobs", params={"after": "ftjob-nope"}, headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "after"
    job_id = create_job(base, text_id, hyperparameters={**TINY_JOB, "max_iters": 1}).json()["id"]
    for after in ("ftevent-²", "garbage", "ftevent-99999999999999999999999"):
        for route in ("events", "checkpoints"):
            answer = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}/{route}", params={"after": after}, headers=ADMIN)
            assert answer.status_code == 200, (route, after, answer.text)
