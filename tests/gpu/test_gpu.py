"""The decode path on a CUDA GPU: graphs, compiled steps, the Triton decode attention kernel, bf16,
dtype auto, batch invariance, grammars, scoring, the server. Skipped without CUDA."""

from __future__ import annotations

import json
import queue
import warnings
from pathlib import Path

import httpx
import pytest
import torch

from charlm import decode_kernel
from charlm.checkpoint import LoadedModel, load_model
from charlm.decoding import NewSequence, SlotDecoder
from charlm.dtype_choice import choose_dtype
from charlm.generation import prompt_ids
from charlm.models import base as models_base
from charlm.sampling import SamplingParams, noise_key, uniform_noise
from charlm.scoring import score
from service.engine.engine import Engine
from service.engine.sequences import Finished, GenerationRequest
from tests.charlm.test_grammar import words_automaton
from tests.service.helpers import live_server

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these)"),
]
CUDA = torch.device("cuda")
BUNDLED = Path(__file__).resolve().parents[2] / "models"


def on_gpu(path: Path, dtype: torch.dtype = torch.bfloat16) -> LoadedModel:
    return load_model(path, device=CUDA, dtype=dtype)


@torch.inference_mode()
def decode(decoder: SlotDecoder, row: int, chars: int, contexts: list[list[int]] | None = None
           ) -> tuple[list[int], list[float]]:
    """The next `chars` characters `row` draws (steps that feed its prompt draw none). With
    `contexts`, a model with a window also records the characters each draw's step attended to."""
    ids, logprobs = [], []
    for _ in range(chars + 100):  # a prompt fed through the step draws nothing for up to 64 steps
        if len(ids) == chars:
            break
        step = decoder.launch()
        result = step.result()
        if step.drew is None or step.drew[row]:
            ids.append(result.ids[row])
            logprobs.append(result.logprobs[row])
            if contexts is not None:
                contexts.append(decoder.state.window(row).tolist())
    assert len(ids) == chars, f"{len(ids)} of {chars} characters"
    return ids, logprobs


class CountingGraph:
    """A captured graph that counts its replays (the decoder only ever calls `replay`)."""

    def __init__(self, graph: torch.cuda.CUDAGraph):
        self.graph, self.replays = graph, 0

    def replay(self) -> None:
        self.replays += 1
        self.graph.replay()


def count_replays(decoder: SlotDecoder) -> dict[tuple[bool, bool], CountingGraph]:
    """Wrap a warmed-up decoder's step graphs, by (controls, grammar)."""
    assert decoder.graphed, "the step was not captured"
    counting = {controls: CountingGraph(graph) for controls, graph in decoder.graphs.items() if graph is not None}
    decoder.graphs = counting  # type: ignore[assignment]
    return counting


@torch.inference_mode()
def fill(decoder: SlotDecoder, loaded: LoadedModel, others: int, target_seed: int, prompt: str = "the") -> int:
    """`others` seeded rows around one target row (added in the middle); returns the target's row."""
    for seed in range(others // 2):
        decoder.add(prompt_ids(loaded.vocab, "war and"), SamplingParams(temperature=1.0), 1000 + seed)
    row = decoder.add(prompt_ids(loaded.vocab, prompt), SamplingParams(temperature=0.9, top_k=20), target_seed)
    for seed in range(others - others // 2):
        decoder.add(prompt_ids(loaded.vocab, "my lord"), SamplingParams(temperature=1.2), 2000 + seed)
    return row


def test_graph_replay_equals_eager(trained_dir):
    loaded = on_gpu(trained_dir)
    graphed = SlotDecoder(loaded.model, 16, compile=False)  # replay, not compilation, is what differs
    eager = SlotDecoder(loaded.model, 16, graphs=False, compile=False)
    graphed.warm_up([loaded.vocab.start_id] * 4)
    assert graphed.graphed and not eager.graphed
    rows = [fill(decoder, loaded, 9, target_seed=5) for decoder in (graphed, eager)]
    assert decode(graphed, rows[0], 40) == decode(eager, rows[1], 40)  # bit for bit, past the window


def test_a_seeded_row_alone_equals_the_same_row_in_a_full_batch_of_255_others(trained_dir):
    """As served: the step compiled, then graphed; a GPT attending with the Triton kernel."""
    loaded = on_gpu(trained_dir)
    alone, full = SlotDecoder(loaded.model, 256), SlotDecoder(loaded.model, 256)
    for decoder in (alone, full):
        decoder.warm_up([loaded.vocab.start_id] * 4)
        assert decoder.graphed  # compiled where it compiles (test_a_compiled_step_... says whether)
    with torch.inference_mode():
        alone_row = alone.add(prompt_ids(loaded.vocab, "the"), SamplingParams(temperature=0.9, top_k=20), 77)
    full_row = fill(full, loaded, 255, target_seed=77)
    assert full.active == 256 and full_row != alone_row
    replays = [count_replays(decoder)[False, False] for decoder in (alone, full)]
    assert decode(alone, alone_row, 60) == decode(full, full_row, 60)
    assert all(graph.replays >= 60 for graph in replays), "the steps did not replay the graph"


def assert_bf16_agrees_with_float32(path: Path, prompt: str, chars: int, atol: float) -> None:
    """The log-probabilities of a bf16 decode against float32 `forward` over exactly what each step
    saw: for a model with a window (gpt), the window its cache held, re-encoded past block_size; for
    the others, the whole text so far."""
    bf16, fp32 = on_gpu(path), on_gpu(path, torch.float32)
    decoder = SlotDecoder(bf16.model, 8)
    prompt_chars = prompt_ids(bf16.vocab, prompt)
    windowed = bf16.model.decode_window is not None
    contexts: list[list[int]] = []
    with torch.inference_mode():
        decoder.add(prompt_chars, SamplingParams(temperature=1.0), 3)
        ids, logprobs = decode(decoder, 0, chars, contexts if windowed else None)
        if not windowed:
            contexts = [prompt_chars + ids[:i] for i in range(chars)]
        expected = [fp32.model(torch.tensor([context], device=CUDA))[0][0, -1].float().log_softmax(-1)[drawn].item()
                    for context, drawn in zip(contexts, ids, strict=True)]
    if windowed:
        assert min(map(len, contexts)) < max(map(len, contexts)) == bf16.model.decode_window, "never re-encoded"
    difference = (torch.tensor(logprobs) - torch.tensor(expected)).abs()
    assert difference.max() < atol and difference.mean() < atol / 3, (difference.max(), difference.mean())


def test_bf16_decoding_agrees_with_float32_forward_past_the_window(trained_dir):
    assert_bf16_agrees_with_float32(trained_dir, "the", chars=60, atol=0.15)  # the tiny windows are 8 and 16


def test_the_bundled_bf16_model_agrees_with_float32_past_its_window():
    """shakespeare-gpt-large: weights stored in bf16, served in bf16 on a GPU; block_size 256."""
    assert_bf16_agrees_with_float32(BUNDLED / "shakespeare-gpt-large", "ROMEO:", chars=400, atol=0.25)


def test_decode_attention_never_runs_cudnn(tiny_models, monkeypatch):
    """Scaled dot-product attention, as decoding falls back to when the Triton kernel cannot run."""
    monkeypatch.setattr(models_base, "DECODE_ATTENTION", "sdpa")
    loaded = on_gpu(tiny_models / "tiny-gpt")
    decoder = SlotDecoder(loaded.model, 4, graphs=False)
    with torch.inference_mode():
        decoder.add(prompt_ids(loaded.vocab, "the king"), SamplingParams(), 1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            decoder.launch().result()
    names = {event.name for event in profile.events()}
    assert any("scaled_dot_product" in name for name in names)
    assert not any("cudnn_attention" in name for name in names), sorted(names)


def test_lstm_weights_stay_one_cudnn_chunk_in_bf16(tiny_models):
    loaded = on_gpu(tiny_models / "tiny-lstm")
    weights = loaded.model.lstm._flat_weights
    assert len({w.untyped_storage().data_ptr() for w in weights}) == 1
    decoder = SlotDecoder(loaded.model, 2, graphs=False)
    long_prompt = "the king and the queen shall speak of love and war, my lord, at night; " * 3  # prefilled
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error")  # "RNN module weights are not part of single contiguous chunk"
        decoder.add(prompt_ids(loaded.vocab, long_prompt), SamplingParams(), 1)
        decode(decoder, 0, 3)


def test_noise_is_the_same_on_cpu_and_gpu():
    keys = torch.tensor([noise_key(seed) for seed in (0, 1, 2**40, 2**63 - 1)]).repeat_interleave(500)
    counters = torch.arange(500).repeat(4)
    assert torch.equal(uniform_noise(keys, counters), uniform_noise(keys.to(CUDA), counters.to(CUDA)).cpu())


def test_a_failed_capture_falls_back_to_eager(trained_dir, monkeypatch, caplog):
    loaded = on_gpu(trained_dir)
    step = loaded.model.step

    def syncing_step(tokens, state, filled=None):  # fault injection: a host sync cannot be captured
        if torch.cuda.is_current_stream_capturing():
            tokens.sum().item()
        return step(tokens, state, filled)

    monkeypatch.setattr(loaded.model, "step", syncing_step)
    engine = Engine("tiny", loaded.model, loaded.vocab, max_batch_size=8, max_queued=8, compile_step=False)
    engine.start()
    try:
        assert engine.memory["cuda_graphs"] is False and "capture failed" in caplog.text
        done: queue.Queue[Finished] = queue.Queue()
        ids = prompt_ids(loaded.vocab, "the")
        engine.submit(GenerationRequest(ids, 30, SamplingParams(seed=1), lambda events: [
            done.put(e) for e in events if isinstance(e, Finished)]))
        end = done.get(timeout=60)
        assert end.reason.value == "length" and end.generated_tokens == 30
    finally:
        engine.close()
        engine.join(30)


def test_a_server_on_cuda_streams(tiny_models):
    with live_server(tiny_models, device="cuda", max_batch_size=32, compile=False) as (base, _):
        info = httpx.get(f"{base}/info").json()
        assert info["device"].startswith("cuda") and info["dtype"] == "bfloat16"
        assert all(m["cuda_graphs"] and m["compiled"] is False for m in info["models"].values())
        for model in info["models"].values():  # dtype auto: each model timed in both at startup
            assert model["dtype"] in ("bfloat16", "float32") and "ms in float32" in model["dtype_reason"]
        assert info["models"]["tiny-gpt"]["decode_attention"] == "triton"
        body = {"inputs": "the", "parameters": {"max_new_tokens": 50, "seed": 3, "do_sample": True}}
        with httpx.stream("POST", f"{base}/generate_stream", json=body, timeout=60) as response:
            events = [line for line in response.iter_lines() if line.startswith("data:")]
        assert response.status_code == 200 and len(events) == 50
        whole = httpx.post(f"{base}/generate", json=body, timeout=60).json()["generated_text"]
        assert json.loads(events[-1].removeprefix("data:"))["generated_text"] == whole


def test_the_sampling_controls_replay_as_a_graph_and_keep_batch_invariance(trained_dir):
    """The step captured with the sampling controls: a row using them draws the same alone and
    among 255 others, and a row without them the same as in the graph without them."""
    loaded = on_gpu(trained_dir)
    controlled = SamplingParams(temperature=0.9, repetition_penalty=1.3, min_p=0.05, typical_p=0.9,
                                presence_penalty=0.5, logit_bias=((0, -2.0),))
    # Not compiled: the graph with controls is the subject here, and compiling costs the check's time.
    alone, full = SlotDecoder(loaded.model, 256, compile=False), SlotDecoder(loaded.model, 256, compile=False)
    for decoder in (alone, full):
        decoder.warm_up([loaded.vocab.start_id] * 4)
    replays = [count_replays(decoder)[True, False] for decoder in (alone, full)]
    with torch.inference_mode():
        alone_row = alone.add(prompt_ids(loaded.vocab, "the king"), controlled, 21)
        for seed in range(127):
            full.add(prompt_ids(loaded.vocab, "war"), SamplingParams(temperature=1.0), 500 + seed)
        full_row = full.add(prompt_ids(loaded.vocab, "the king"), controlled, 21)
        for seed in range(128):
            full.add(prompt_ids(loaded.vocab, "my lord"), SamplingParams(top_k=5), 900 + seed)
    assert decode(alone, alone_row, 50) == decode(full, full_row, 50)
    assert all(graph.replays >= 50 for graph in replays), "the steps did not replay the graph with the controls"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_triton_kernel_equals_scaled_dot_product_attention_on_the_gpu(dtype):
    """Compiled for this card, split as the card's size decides and as forced, over many lengths."""
    assert decode_kernel.available() is None
    generator = torch.Generator().manual_seed(7)
    for batch, heads, span, head_dim, splits in ((1, 6, 256, 64, 0), (256, 6, 256, 64, 0), (3, 4, 128, 32, 2),
                                                 (64, 2, 100, 24, 0)):
        q, keys, values, lengths = decode_kernel.random_case(batch, heads, span, head_dim, dtype, CUDA, generator)
        got = decode_kernel.attention(q, keys, values, lengths, splits)
        torch.testing.assert_close(got.float(), decode_kernel.reference(q, keys, values, lengths),
                                   atol=decode_kernel.TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("architecture", ["gpt", "lstm", "lstm_attention"])
def test_a_compiled_step_decodes_what_the_step_as_written_decodes(tiny_models, architecture):
    loaded = on_gpu(tiny_models / f"tiny-{architecture}", torch.float32)
    compiled, written = SlotDecoder(loaded.model, 16), SlotDecoder(loaded.model, 16, compile=False)
    for decoder in (compiled, written):
        decoder.warm_up([loaded.vocab.start_id] * 4)
    assert compiled.report["compiled"] is True and compiled.report["compile_s"] > 0, compiled.report
    assert architecture != "gpt" or compiled.report["decode_attention"] == "triton", compiled.report
    rows = [fill(decoder, loaded, 9, target_seed=5) for decoder in (compiled, written)]
    (ids, logprobs), (expected_ids, expected_logprobs) = decode(compiled, rows[0], 40), decode(written, rows[1], 40)
    assert ids == expected_ids
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(expected_logprobs), atol=1e-4, rtol=1e-4)


def test_dtype_auto_times_both_dtypes_and_keeps_the_faster(tiny_models):
    loaded = on_gpu(tiny_models / "tiny-lstm", torch.float32)
    choice = choose_dtype(loaded.model, 64)
    assert choice.dtype in (torch.bfloat16, torch.float32)
    assert "in bfloat16" in choice.reason and "ms in float32" in choice.reason
    assert next(loaded.model.parameters()).dtype == torch.float32  # timed on copies


def test_the_grammar_step_replays_as_a_graph_and_keeps_batch_invariance(trained_dir):
    """The step captured with the grammar table: a constrained row draws the same alone and among 255
    others (some constrained by other grammars), stays within its grammar, and a grammar placed after
    capture is seen by the replayed graph."""
    loaded = on_gpu(trained_dir)
    grammar = words_automaton(["king", "queen", "lord", "love"], loaded.vocab.chars, repeat=True)
    other = words_automaton(["war", "night"], loaded.vocab.chars, key="other", repeat=True)
    params = SamplingParams(temperature=1.1, top_k=10)
    alone, full = SlotDecoder(loaded.model, 256), SlotDecoder(loaded.model, 256)
    for decoder in (alone, full):
        decoder.warm_up([loaded.vocab.start_id] * 4)
        assert decoder.graphed
    prompt = prompt_ids(loaded.vocab, "my ")
    with torch.inference_mode():
        alone_row = alone.add_group([NewSequence(prompt, params, 31, grammar=grammar)])
        for seed in range(127):
            full.add_group([NewSequence(prompt_ids(loaded.vocab, "war"), SamplingParams(temperature=1.0), 500 + seed,
                                        grammar=other if seed % 2 else None)])
        full_row = full.add_group([NewSequence(prompt, params, 31, grammar=grammar)])
        for seed in range(128):
            full.add(prompt_ids(loaded.vocab, "my lord"), SamplingParams(top_k=5), 900 + seed)
    ids, _ = decode(alone, alone_row, 40)
    assert decode(full, full_row, 40)[0] == ids
    assert grammar.walk(ids) is not None


@torch.inference_mode()
def test_scoring_on_the_gpu_agrees_with_the_cpu(trained_dir):
    text = "the king and the queen shall speak of love and war, my lord, at night; " * 4
    cpu, gpu = load_model(trained_dir), on_gpu(trained_dir, torch.float32)
    ids = torch.from_numpy(cpu.vocab.encode(text))
    on_cpu, on_cuda = score(cpu.model, ids, top_n=3), score(gpu.model, ids, top_n=3)
    assert abs(on_cpu.logprobs - on_cuda.logprobs).max() < 1e-3
    greedy = on_cuda.ranks == 1
    assert (on_cuda.logprobs[greedy] == on_cuda.top_logprobs[greedy, 0]).all()
