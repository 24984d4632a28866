"""The engine batches sequences yet each one comes out as if generated alone."""

import queue

import pytest

from charlm.checkpoint import load_model
from charlm.generation import generate, prompt_ids
from charlm.sampling import SamplingParams
from service.engine import Engine, EngineClosed, QueueFull
from service.sequences import Finished, GenerationRequest
from service.stopping import FinishReason

PROMPTS = ["the king", "", "my lord and", "war", "night of love and war and"]


def run_requests(engine, specs):
    """Submit (prompt_ids, params, max_new) specs at once; the text and end of each."""
    events = queue.Queue()
    requests = [
        GenerationRequest(ids, max_new, params, on_event=lambda e, i=i: events.put((i, e)))
        for i, (ids, params, max_new) in enumerate(specs)
    ]
    for request in requests:
        engine.submit(request)
    ends = {}
    while len(ends) < len(requests):
        index, event = events.get(timeout=60)
        if isinstance(event, Finished):
            ends[index] = event
    return [ends[i] for i in range(len(requests))]


@pytest.fixture()
def engine(trained_dir):
    loaded = load_model(trained_dir)
    engine = Engine(trained_dir.name, loaded.model, loaded.vocab, max_batch_size=8, max_queued=64)
    engine.start()
    yield engine
    engine.close()


def test_batched_sequences_equal_the_one_at_a_time_reference(engine):
    """Past the tiny gpt's block_size of 16, with different prompts, lengths and samplers."""
    vocab, model = engine.vocab, engine.model
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, seed=s)
              for t, k, p, s in [(1.0, 0, 1.0, 1), (0.8, 5, 1.0, 2), (1.2, 0, 0.9, 3), (0.0, 0, 1.0, 4),
                                 (1.0, 3, 0.8, 5)]]
    lengths = [40, 25, 33, 18, 40]
    specs = [(prompt_ids(vocab, p), sp, n) for p, sp, n in zip(PROMPTS, params, lengths, strict=True)]
    ends = run_requests(engine, specs)
    for prompt, sp, n, end in zip(PROMPTS, params, lengths, ends, strict=True):
        reference = "".join(c.char for c in generate(model, vocab, prompt, n, sp))
        assert end.text == reference and end.reason is FinishReason.LENGTH
    assert engine.max_batch_seen == 5


def test_more_requests_than_the_batch_queue_and_all_finish(engine):
    ids = prompt_ids(engine.vocab, "the")
    ends = run_requests(engine, [(ids, SamplingParams(seed=i), 10) for i in range(20)])
    assert all(end.reason is FinishReason.LENGTH and end.generated_tokens == 10 for end in ends)
    assert engine.max_batch_seen == 8 and engine.active == 0 and engine.queued == 0


def test_zero_new_tokens_finishes_at_once(engine):
    (end,) = run_requests(engine, [(prompt_ids(engine.vocab, "the"), SamplingParams(), 0)])
    assert end.reason is FinishReason.LENGTH and end.text == "" and end.generated_tokens == 0


def test_a_cancelled_request_leaves_the_batch(engine):
    events = queue.Queue()
    request = GenerationRequest(prompt_ids(engine.vocab, "the"), 100_000, SamplingParams(), events.put)
    engine.submit(request)
    events.get(timeout=30)  # it is running
    request.cancel()
    while not isinstance(event := events.get(timeout=30), Finished):
        pass
    assert event.reason is FinishReason.CANCELLED and engine.active == 0


def test_the_queue_is_bounded_and_a_closed_engine_refuses(trained_dir):
    loaded = load_model(trained_dir)
    engine = Engine("m", loaded.model, loaded.vocab, max_batch_size=1, max_queued=1)  # not started
    request = GenerationRequest([0], 5, SamplingParams(), lambda e: None)
    engine.submit(request)
    with pytest.raises(QueueFull):
        engine.submit(request)
    engine.start()
    engine.close()
    with pytest.raises(EngineClosed):
        engine.submit(request)
