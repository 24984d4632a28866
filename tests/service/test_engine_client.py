"""An engine in a process of its own (these tests start real child processes): the same sequences as
the engine in a thread, cancellation across the pipe, 429 decided on this side, metrics carried
over, and a child that dies ends its sequences with an error instead of leaving them hanging."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest
import torch

from charlm.checkpoint import load_model
from charlm.generation import generate, prompt_ids
from charlm.sampling import SamplingParams
from service.engine.engine import EngineClosed, QueueFull
from service.engine.process import EngineSpec
from service.engine.sequences import Finished, GenerationRequest
from service.engine.stopping import FinishReason
from service.frontend.engine_client import EngineClient
from service.frontend.metrics import ServiceMetrics
from tests.helpers import take


@pytest.fixture()
def client(tiny_models):
    spec = EngineSpec("tiny-gpt", tiny_models / "tiny-gpt", "cpu", torch.float32, max_batch_size=2, max_queued=1,
                      cuda_graphs=False, threads=1, log_level="warning")
    engine = EngineClient(spec, ServiceMetrics())
    engine.start()
    yield engine
    engine.close()
    engine.cancel_all()
    assert engine.join(60)


def collecting(events: queue.Queue, name: str):
    return lambda batch: [events.put((name, e)) for e in batch]


def finish_of(events: queue.Queue, names: set[str]) -> dict[str, Finished]:
    deadline = time.monotonic() + 60
    ends: dict[str, Finished] = {}
    while set(ends) != names:
        name, event = take(events, deadline, f"the ends of {sorted(names - set(ends))}")
        if isinstance(event, Finished):
            ends[name] = event
    return ends


def test_sequences_equal_the_ones_generated_in_this_process(client, tiny_models):
    loaded = load_model(tiny_models / "tiny-gpt")
    events: queue.Queue = queue.Queue()
    prompts = {"a": "the king", "b": "war"}
    params = {"a": SamplingParams(temperature=0.9, seed=5), "b": SamplingParams(temperature=1.1, top_k=4, seed=6)}
    client.submit_all([GenerationRequest(prompt_ids(loaded.vocab, prompts[n]), 40, params[n], collecting(events, n))
                       for n in prompts])
    ends = finish_of(events, set(prompts))
    for name, prompt in prompts.items():
        reference = "".join(c.char for c in generate(loaded.model, loaded.vocab, prompt, 40, params[name]))
        assert ends[name].text == reference and ends[name].reason is FinishReason.LENGTH
    counted = client.metrics.registry.get_sample_value("charlm_chars_generated_total", {"model": "tiny-gpt"})
    assert counted == 80  # counted in the child, carried here


def test_a_cancellation_crosses_the_pipe(client):
    events: queue.Queue = queue.Queue()
    request = GenerationRequest([1, 2], 10**9, SamplingParams(), collecting(events, "endless"))
    client.submit(request)
    take(events, time.monotonic() + 60, "the first character")  # it runs
    request.cancel()
    assert finish_of(events, {"endless"})["endless"].reason is FinishReason.CANCELLED
    assert client.active == 0 and client.queued == 0


def test_the_queue_limit_is_decided_here(client):
    events: queue.Queue = queue.Queue()
    running = [GenerationRequest([1], 10**9, SamplingParams(), collecting(events, f"r{i}")) for i in range(3)]
    client.submit_all(running)  # two rows and one waiting: full
    with pytest.raises(QueueFull):
        client.submit(GenerationRequest([1], 5, SamplingParams(), collecting(events, "late")))
    for request in running:
        request.cancel()
    finish_of(events, {"r0", "r1", "r2"})


def test_a_child_that_dies_ends_its_sequences_with_an_error(tiny_models):
    spec = EngineSpec("tiny-lstm", tiny_models / "tiny-lstm", "cpu", torch.float32, max_batch_size=2, max_queued=2,
                      cuda_graphs=False, threads=1, log_level="warning")
    engine = EngineClient(spec, ServiceMetrics())
    engine.start()
    events: queue.Queue = queue.Queue()
    engine.submit(GenerationRequest([1, 2], 10**9, SamplingParams(), collecting(events, "running")))
    take(events, time.monotonic() + 60, "the first character")
    os.kill(engine._process.pid, signal.SIGKILL)
    end = finish_of(events, {"running"})["running"]
    assert end.reason is FinishReason.ERROR and "exited unexpectedly" in (end.error or "")
    assert engine.failure is not None and "exited unexpectedly" in engine.failure
    with pytest.raises(EngineClosed):
        engine.submit(GenerationRequest([1], 5, SamplingParams(), collecting(events, "after")))
    assert engine.join(30)


def test_a_model_that_cannot_load_is_reported_by_start(tmp_path):
    spec = EngineSpec("missing", tmp_path / "missing", "cpu", torch.float32, 2, 2, False, 1, "warning")
    engine = EngineClient(spec, ServiceMetrics())
    with pytest.raises(EngineClosed, match="not a directory"):
        engine.start()
