"""The running batch as it runs on CUDA (fixed shape, prompts fed through the step, results one
step late), driven on a CPU: every sequence still comes out exactly as if generated alone."""

import pytest
import torch

from charlm.checkpoint import load_model
from charlm.decoding import SlotDecoder
from charlm.generation import prompt_ids
from charlm.sampling import SamplingParams
from service.engine.batch import RunningBatch
from service.engine.events import CallbackSink, StepEventsBuilder
from service.engine.sequences import EngineMetrics, Finished, GenerationRequest
from service.engine.stopping import FinishReason

CUDA_LIKE = {"fixed_shape": True, "feed_prompts": True}


def batch_of(model, vocab, slots: int, **mode) -> RunningBatch:
    return RunningBatch(SlotDecoder(model, slots, **mode), vocab.chars, EngineMetrics(), StepEventsBuilder())


def run(batch: RunningBatch, specs, cancel_after: dict[int, int] | None = None) -> list[Finished]:
    """Admit (prompt ids, params, max_new, stop) specs one per step, step until all end; each step's
    events go through a CallbackSink as an engine's would."""
    ends: dict[int, Finished] = {}
    seen = [0] * len(specs)

    def on_events(index, events):
        seen[index] += sum(1 for e in events if not isinstance(e, Finished))
        for event in events:
            if isinstance(event, Finished):
                ends[index] = event

    sink = CallbackSink(batch.chars)
    requests = [GenerationRequest(ids, n, params, lambda events, i=i: on_events(i, events), stop=stop, key=i)
                for i, (ids, params, n, stop) in enumerate(specs)]
    sink.accepted(requests)
    waiting = list(requests)
    with torch.inference_mode():
        for _ in range(10_000):
            if waiting and len(batch.rows) < batch.decoder.slots:  # the engine's rule
                batch.admit([waiting.pop(0)])
            for index, after in (cancel_after or {}).items():
                if seen[index] >= after:
                    requests[index].cancel()
            batch.step()
            sink.deliver(batch.out.take())
            if len(ends) == len(specs) and not batch.busy:
                break
    return [ends[i] for i in range(len(specs))]


@pytest.mark.parametrize("mode", [{}, CUDA_LIKE], ids=["cpu", "cuda-like"])
def test_sequences_in_a_pipelined_fixed_batch_equal_each_alone(trained_dir, mode):
    loaded = load_model(trained_dir)
    vocab = loaded.vocab
    specs = [
        (prompt_ids(vocab, "the king"), SamplingParams(temperature=1.0, seed=1), 30, ()),
        (prompt_ids(vocab, "my lord and the queen shall speak of war and love, at night"),
         SamplingParams(temperature=0.8, top_k=5, seed=2), 25, ()),
        (prompt_ids(vocab, ""), SamplingParams(temperature=0.0, seed=3), 12, ()),
        (prompt_ids(vocab, "war"), SamplingParams(temperature=1.2, top_p=0.9, seed=4), 40, (",",)),
        (prompt_ids(vocab, "of"), SamplingParams(temperature=1.0, seed=5), 35, ()),
    ]
    together = run(batch_of(loaded.model, vocab, 3, **mode), specs)
    for spec, end in zip(specs, together, strict=True):
        alone = run(batch_of(loaded.model, vocab, 3, **mode), [spec])[0]
        assert (end.text, end.reason, end.generated_tokens) == (alone.text, alone.reason, alone.generated_tokens)
        assert end.reason in (FinishReason.LENGTH, FinishReason.STOP)


def test_a_cancelled_row_leaves_and_the_others_run_on(trained_dir):
    loaded = load_model(trained_dir)
    vocab = loaded.vocab
    ids = prompt_ids(vocab, "the")
    specs = [(ids, SamplingParams(seed=s), 40, ()) for s in range(3)]
    ends = run(batch_of(loaded.model, vocab, 3, **CUDA_LIKE), specs,
               cancel_after={1: 5})
    assert ends[1].reason is FinishReason.CANCELLED and 5 <= ends[1].generated_tokens < 40
    assert [ends[i].generated_tokens for i in (0, 2)] == [40, 40]
