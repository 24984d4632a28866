"""The engine batches sequences yet each one comes out as if generated alone."""

import queue
import time

import pytest

from charlm.checkpoint import load_model
from charlm.generation import generate, prompt_ids
from charlm.sampling import SamplingParams
from service.engine.engine import Engine, EngineClosed, QueueFull
from service.engine.sequences import Finished, GenerationRequest
from service.engine.stopping import FinishReason
from tests.helpers import take, wait_until
from tests.service.helpers import fail_the_nth_step

PROMPTS = ["the king", "", "my lord and", "war", "night of love and war and"]


def run_requests(engine, specs):
    """Submit (prompt_ids, params, max_new) specs at once; the text and end of each."""
    events = queue.Queue()
    requests = [
        GenerationRequest(ids, max_new, params, on_events=lambda batch, i=i: [events.put((i, e)) for e in batch])
        for i, (ids, params, max_new) in enumerate(specs)
    ]
    engine.submit_all(requests)
    ends = finish_of(events, set(range(len(requests))))
    return [ends[i] for i in range(len(requests))]


def finish_of(events, names, timeout=60.0):
    """The Finished event of each name in `names`, from (name, event) pairs; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    ends = {}
    while set(ends) != set(names):
        name, event = take(events, deadline, f"the ends of {sorted(set(names) - set(ends))}")
        if isinstance(event, Finished):
            ends[name] = event
    return ends


@pytest.fixture()
def engine(trained_dir):
    loaded = load_model(trained_dir)
    engine = Engine(trained_dir.name, loaded.model, loaded.vocab, max_batch_size=8, max_queued=64)
    engine.start()
    yield engine
    engine.close()
    assert engine.join(60), "the engine did not stop"


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


def test_a_request_alone_is_charlm_generate_bit_for_bit(engine):
    """Alone, the engine steps one row as `charlm generate` does: the same characters with the same
    log-probabilities, exactly (in a batch, a CPU agrees up to rounding: docs/api-semantics.md, Determinism)."""
    events = queue.Queue()
    params = SamplingParams(temperature=1.0, top_k=8, seed=9)
    ids = prompt_ids(engine.vocab, "my lord")
    engine.submit(GenerationRequest(ids, 40, params, lambda batch: [events.put(("alone", e)) for e in batch]))
    deadline, tokens = time.monotonic() + 60, []
    while not isinstance(event := take(events, deadline, "the request's characters")[1], Finished):
        tokens.append((event.id, event.logprob))
    reference = [(c.id, c.logprob) for c in generate(engine.model, engine.vocab, "my lord", 40, params)]
    assert tokens == reference


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
    request = GenerationRequest(prompt_ids(engine.vocab, "the"), 100_000, SamplingParams(),
                                lambda batch: [events.put(e) for e in batch])
    engine.submit(request)
    deadline = time.monotonic() + 30
    take(events, deadline, "the first character")  # it is running
    request.cancel()
    while not isinstance(event := take(events, deadline, "the end of the cancelled request"), Finished):
        pass
    assert event.reason is FinishReason.CANCELLED and engine.active == 0


def test_the_queue_is_bounded_and_a_closed_engine_refuses(trained_dir):
    loaded = load_model(trained_dir)
    engine = Engine("m", loaded.model, loaded.vocab, max_batch_size=1, max_queued=1)  # not started
    requests = [GenerationRequest([0], 5, SamplingParams(), lambda events: None) for _ in range(3)]
    with pytest.raises(QueueFull):  # room for one in the batch and one waiting: all or none
        engine.submit_all(requests)
    assert engine.queued == 0
    engine.submit_all(requests[:2])
    with pytest.raises(QueueFull):
        engine.submit(requests[2])
    engine.start()
    engine.close()
    assert engine.join(30)
    with pytest.raises(EngineClosed):
        engine.submit(requests[2])


def test_a_failing_prefill_ends_only_its_own_request(engine, monkeypatch):
    prefill = engine.model.prefill

    def fail_on_long_prompts(tokens, state):  # fault injection: the model itself is real
        if tokens.size(1) > 5:
            raise RuntimeError("out of memory")
        return prefill(tokens, state)

    monkeypatch.setattr(engine.model, "prefill", fail_on_long_prompts)
    vocab = engine.vocab
    ends = run_requests(engine, [(prompt_ids(vocab, "the"), SamplingParams(seed=1), 20),
                                 (prompt_ids(vocab, "the king and"), SamplingParams(seed=2), 20)])
    assert ends[0].reason is FinishReason.LENGTH and ends[0].generated_tokens == 20
    assert ends[1].reason is FinishReason.ERROR and "out of memory" in ends[1].error


def test_the_engine_recovers_after_a_failed_step(engine, monkeypatch):
    fail_the_nth_step(engine, monkeypatch, 5, "device lost")
    ids = prompt_ids(engine.vocab, "the")
    (failed,) = run_requests(engine, [(ids, SamplingParams(seed=1), 30)])
    assert failed.reason is FinishReason.ERROR and "device lost" in failed.error
    (ok,) = run_requests(engine, [(ids, SamplingParams(seed=1), 30)])
    assert ok.reason is FinishReason.LENGTH and engine.active == 0


def test_closing_lets_active_sequences_finish_and_cancel_all_ends_them(engine):
    events = queue.Queue()
    ids = prompt_ids(engine.vocab, "the")
    short = GenerationRequest(ids, 400, SamplingParams(), lambda batch: [events.put(("short", e)) for e in batch])
    endless = GenerationRequest(ids, 10**9, SamplingParams(), lambda batch: [events.put(("long", e)) for e in batch])
    engine.submit_all([short, endless])
    # both running: closing cancels only what still waits (the short one takes a few hundred steps)
    assert wait_until(lambda: engine.active == 2, timeout=30, interval=0.001), "the two never ran together"
    engine.close()
    ends = finish_of(events, {"short"})
    assert ends["short"].reason is FinishReason.LENGTH and not engine.join(0.2)  # the endless one runs on
    engine.cancel_all()
    assert engine.join(30), "cancel_all did not end the engine"
    ends = finish_of(events, {"long"})
    assert ends["long"].reason is FinishReason.CANCELLED


def test_a_request_timing_out_while_queued_never_starts(trained_dir):
    loaded = load_model(trained_dir)
    engine = Engine("m", loaded.model, loaded.vocab, max_batch_size=1, max_queued=4)
    engine.start()
    ids = prompt_ids(loaded.vocab, "the")
    events = queue.Queue()
    blocker = GenerationRequest(ids, 10**9, SamplingParams(), lambda batch: None)
    waiting = GenerationRequest(ids, 5, SamplingParams(), lambda batch: [events.put(e) for e in batch], timeout_s=0.1)
    engine.submit(blocker)
    engine.submit(waiting)
    (end,) = [take(events, time.monotonic() + 30, "the queued request's end")]
    assert end.reason is FinishReason.TIMEOUT and end.generated_tokens == 0 and end.first_char_s is None
    blocker.cancel()
    engine.close()
    assert engine.join(30), "the engine did not stop"
