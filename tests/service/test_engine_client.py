"""An engine in a process of its own, reached by front ends over its socket (these tests start real
engine processes): the same sequences as generated here, cancellation across the socket, 429
decided by the engine from every front end's requests, metrics carried over, a front end that goes
away has its requests cancelled, and an engine that dies ends its sequences with an error instead
of leaving them hanging."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from charlm.checkpoint import load_model
from charlm.generation import generate, prompt_ids
from charlm.sampling import SamplingParams
from service.control.engines import EngineProcess
from service.control.registry import UnknownModelError
from service.control.views import ModelView
from service.engine.engine import EngineClosed, QueueFull
from service.engine.specs import EngineSpec, RequestSpec
from service.engine.stopping import FinishReason
from service.frontend.engine_client import EngineClient
from service.frontend.metrics import ServiceMetrics
from service.frontend.models import FrontModels
from service.frontend.streams import Pacer, Submission, chunk_ids

pytestmark = pytest.mark.anyio


def spec_for(path: Path, runtime: Path, **overrides) -> EngineSpec:
    values = dict(name=path.name, path=path, device="cpu", dtype=torch.float32, max_batch_size=2, max_queued=1,
                  cuda_graphs=False, threads=1, log_level="warning", address=str(runtime / "engine.sock"))
    return EngineSpec(**{**values, **overrides})


@pytest.fixture()
def engine(tiny_models, tmp_path):
    handle = EngineProcess(spec_for(tiny_models / "tiny-gpt", tmp_path))
    handle.start()
    yield handle
    handle.close()
    handle.cancel_all()
    assert handle.join(60)


async def connected(handle: EngineProcess, metrics: ServiceMetrics | None = None) -> EngineClient:
    assert handle.address is not None
    client = EngineClient(handle.name, handle.address, metrics or ServiceMetrics())
    await client.connect()
    return client


async def submit(client: EngineClient, prompts: list[list[int]], params: list[SamplingParams], max_new: int,
                 interval: int = 0) -> Submission:
    submission = Submission(len(prompts), interval, Pacer(1e9, 60), client.cancel)
    specs = [RequestSpec(-1, ids, max_new, p, (), 0, None, "test", time.monotonic())
             for ids, p in zip(prompts, params, strict=True)]
    await client.submit(submission, specs)
    return submission


async def texts(submission: Submission, chars: list[str]) -> list[tuple[str, FinishReason, str | None]]:
    """Each sequence's text, finish reason and error, once all have ended."""
    collected: dict[int, list[int]] = {s.index: [] for s in submission.sequences}
    async for ready in submission.updates():
        for sequence in ready or ():
            collected[sequence.index] += chunk_ids(sequence.take()[0]).tolist()
    ends = [s.end for s in submission.sequences]
    return [("".join(chars[i] for i in collected[k]), e.reason, e.error) for k, e in enumerate(ends) if e]


async def test_sequences_equal_the_ones_generated_in_this_process(engine, tiny_models):
    loaded = load_model(tiny_models / "tiny-gpt")
    metrics = ServiceMetrics()
    client = await connected(engine, metrics)
    prompts = ["the king", "war"]
    params = [SamplingParams(temperature=0.9, seed=5), SamplingParams(temperature=1.1, top_k=4, seed=6)]
    submission = await submit(client, [prompt_ids(loaded.vocab, p) for p in prompts], params, 40)
    results = await texts(submission, loaded.vocab.chars)
    for prompt, p, (text, reason, _) in zip(prompts, params, results, strict=True):
        reference = "".join(c.char for c in generate(loaded.model, loaded.vocab, prompt, 40, p))
        assert text == reference and reason is FinishReason.LENGTH
    counted = metrics.registry.get_sample_value("charlm_chars_generated_total", {"model": "tiny-gpt"})
    assert counted == 80  # counted in the engine process, carried here
    client.close()


async def test_a_cancellation_crosses_the_socket(engine):
    client = await connected(engine)
    submission = await submit(client, [[1, 2]], [SamplingParams()], 10**9, interval=1)
    updates = submission.updates()
    assert await anext(updates)  # it runs
    submission.cancel()
    async for ready in updates:
        for sequence in ready or ():
            sequence.take()
    assert submission.sequences[0].end.reason is FinishReason.CANCELLED
    client.close()


async def test_the_queue_limit_counts_every_front_ends_requests(engine):
    """Two rows and one queued place in all: the second front end is refused when the first has
    filled them."""
    first, second = await connected(engine), await connected(engine)
    running = await submit(first, [[1], [1], [1]], [SamplingParams()] * 3, 10**9, interval=1)
    with pytest.raises(QueueFull):
        await submit(second, [[1]], [SamplingParams()], 5)
    running.cancel()
    await texts(running, ["?"] * 100)
    done = await submit(second, [[1]], [SamplingParams()], 5)  # room again
    assert (await texts(done, ["?"] * 100))[0][1] is FinishReason.LENGTH
    first.close()
    second.close()


async def test_a_front_end_that_goes_away_has_its_requests_cancelled(engine):
    leaving, staying = await connected(engine), await connected(engine)
    await submit(leaving, [[1], [1]], [SamplingParams()] * 2, 10**9, interval=1)
    leaving.close()
    for _ in range(500):  # the engine frees both rows within a few steps
        probe = await submit(staying, [[1]], [SamplingParams()], 1)
        await texts(probe, ["?"] * 100)
        if staying.active == 0 and staying.queued == 0:
            break
        await asyncio.sleep(0.02)
    assert staying.active == 0 and staying.queued == 0
    staying.close()


async def test_an_engine_that_dies_ends_its_sequences_with_an_error(tiny_models, tmp_path):
    handle = EngineProcess(spec_for(tiny_models / "tiny-lstm", tmp_path, max_queued=2))
    handle.start()
    client = await connected(handle)
    submission = await submit(client, [[1, 2]], [SamplingParams()], 10**9, interval=1)
    updates = submission.updates()
    assert await anext(updates)
    assert handle.pid is not None
    os.kill(handle.pid, signal.SIGKILL)
    async for ready in updates:
        for sequence in ready or ():
            sequence.take()
    end = submission.sequences[0].end
    assert end.reason is FinishReason.ERROR and "exited unexpectedly" in (end.error or "")
    assert client.failure is not None and "exited unexpectedly" in client.failure
    with pytest.raises(EngineClosed):
        await submit(client, [[1]], [SamplingParams()], 5)
    assert handle.join(30)
    assert handle.failure is not None and "exited unexpectedly" in handle.failure


def test_a_model_that_cannot_load_is_reported_by_start(tmp_path):
    handle = EngineProcess(spec_for(tmp_path / "missing", tmp_path))
    with pytest.raises(EngineClosed, match="not a directory"):
        handle.start()


async def test_a_model_whose_engine_this_front_end_cannot_reach_is_failed_not_ready(tiny_models, tmp_path):
    """The control plane says ready, but the connection fails (no listener): the front end serves it
    as failed, with the reason, rather than as ready without a client."""
    models = FrontModels(ServiceMetrics())
    view = ModelView("tiny-lstm", tiny_models / "tiny-lstm", "ready", engine=str(tmp_path / "gone.sock"))
    await models.follow({"tiny-lstm": view}, "tiny-lstm")
    assert models.status(view) == "failed" and models.ready == []
    assert "cannot reach the engine of model tiny-lstm" in (models.reason(view) or "")
    with pytest.raises(UnknownModelError):
        models.get("tiny-lstm")
