"""The slot decoder: rows join, leave and move, and every sequence comes out as if decoded alone."""

import pytest
import torch

from charlm.checkpoint import load_model
from charlm.decoding import NewSequence, SlotDecoder
from charlm.device_memory import DecoderMemoryError
from charlm.generation import generate, prompt_ids
from charlm.models import ARCHITECTURES, base, build_model
from charlm.sampling import SamplingParams
from tests.helpers import require_triton

LONG_PROMPT = "the king and the queen shall speak of love and war, my lord, at night"  # past every window


# How the decoder runs on CUDA (every step covers all rows; short prompts ride the step), on a CPU.
CUDA_LIKE = {"fixed_shape": True, "feed_prompts": True}
MODES = pytest.mark.parametrize("mode", [{}, CUDA_LIKE], ids=["cpu", "cuda-like"])
STEP_SLACK = 200  # steps beyond the characters wanted: a prompt fed through the step draws nothing


def decode_alone(model, prompt: list[int], params: SamplingParams, seed: int, chars: int, slots: int = 1,
                 **mode):
    return decode_with(SlotDecoder(model, slots, **mode), prompt, params, seed, chars)


def decode_with(decoder: SlotDecoder, prompt: list[int], params: SamplingParams, seed: int, chars: int):
    """The ids and log-probabilities of `chars` characters drawn by a sequence added to `decoder`, alone."""
    row = decoder.add(prompt, params, seed)
    [ids], [logprobs] = draw(decoder, [row], chars)
    return ids, logprobs


def draw(decoder: SlotDecoder, rows: list[int], chars: int, top: int = 0):
    """The first `chars` characters each of `rows` draws, and their log-probabilities (with `top`:
    those of their `top` most likely characters), per row; steps that feed a prompt draw nothing."""
    ids: list[list[int]] = [[] for _ in rows]
    scores: list[list] = [[] for _ in rows]
    for _ in range(chars + STEP_SLACK):
        if min(map(len, ids)) == chars:
            break
        step = decoder.launch()
        result = step.result()
        for drawn, scored, row in zip(ids, scores, rows, strict=True):
            if len(drawn) < chars and (step.drew is None or step.drew[row]):
                drawn.append(result.ids[row])
                scored.append([lp for _, lp in result.top(row, top)] if top else result.logprobs[row])
    fewest = min(map(len, ids))
    assert fewest == chars, f"a row drew {fewest} of {chars} characters in {chars + STEP_SLACK} steps"
    return ids, scores


@MODES
@torch.inference_mode()
def test_rows_joining_and_leaving_mid_stream_decode_as_if_alone(trained_dir, mode):
    """Four rows; sequences join at different steps, one with a prompt longer than the window,
    and leave before the others (the last row moves into the hole). Past the tiny gpt's window."""
    loaded = load_model(trained_dir)
    vocab, model = loaded.vocab, loaded.model
    plan = {  # name: (joins at step, characters, prompt, params)
        "a": (0, 12, "the", SamplingParams(temperature=1.0, seed=1)),
        "b": (2, 45, LONG_PROMPT, SamplingParams(temperature=0.8, top_k=5, seed=2)),
        "c": (3, 30, "", SamplingParams(temperature=1.2, top_p=0.9, seed=3)),
        "d": (13, 25, "my lord", SamplingParams(temperature=0.0, seed=4)),
        "e": (14, 20, "war", SamplingParams(temperature=1.0, top_k=3, top_p=0.8, seed=5)),
    }
    decoder = SlotDecoder(model, 4, **mode)
    rows: list[str] = []  # rows[i]: the sequence in decoder row i
    produced: dict[str, list[int]] = {name: [] for name in plan}
    for step in range(200):
        for name, (start, _, prompt, params) in plan.items():
            if start == step:
                assert decoder.add(prompt_ids(vocab, prompt), params, params.seed) == len(rows)
                rows.append(name)
        if not rows and step > 14:
            break
        if not rows:
            continue
        launched = decoder.launch()
        result = launched.result()
        for row, name in enumerate(list(rows)):
            if launched.drew is None or launched.drew[row]:
                produced[name].append(result.ids[row])
        for name in [n for n in rows if len(produced[n]) == plan[n][1]]:
            row = rows.index(name)
            moved = decoder.remove(row)
            last = rows.pop()
            if moved is not None:
                rows[row] = last
    for name, (_, chars, prompt, params) in plan.items():
        alone, _ = decode_alone(model, prompt_ids(vocab, prompt), params, params.seed, chars, 4, **mode)
        assert produced[name] == alone, name


# Configs whose forward sees the whole history of test_decoded_logprobs_are_those_of_forward.
WHOLE_HISTORY = {"gpt": {"block_size": 64}, "lstm_attention": {"block_size": 6}}


@MODES
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@torch.inference_mode()
def test_decoded_logprobs_are_those_of_forward(architecture, mode):
    """Prefill of all but the last prompt character, then the step: the reported log-probability
    of each drawn character is what `forward` gives it after the whole history."""
    torch.manual_seed(0)
    model = build_model(architecture, {"vocab_size": 11, **WHOLE_HISTORY.get(architecture, {})}).eval()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ids, logprobs = decode_alone(model, prompt, SamplingParams(temperature=1.0), 7, 20, 3, **mode)
    history = torch.tensor([prompt + ids])
    expected = model(history)[0][0, len(prompt) - 1 : -1].log_softmax(-1)  # (20, V)
    torch.testing.assert_close(torch.tensor(logprobs), expected[torch.arange(20), torch.tensor(ids)],
                               rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_the_command_line_loop_and_a_full_decoder_agree(trained_dir):
    loaded = load_model(trained_dir)
    params = SamplingParams(temperature=0.9, seed=11)
    text = "".join(c.char for c in generate(loaded.model, loaded.vocab, "the", 30, params))
    decoder = SlotDecoder(loaded.model, 8)
    for seed in range(7):  # other rows around it
        decoder.add(prompt_ids(loaded.vocab, "war"), SamplingParams(temperature=1.0), seed)
    row = decoder.add(prompt_ids(loaded.vocab, "the"), params, 11)
    ids = [decoder.launch().result().ids[row] for _ in range(30)]
    assert "".join(loaded.vocab.chars[i] for i in ids) == text


@torch.inference_mode()
def test_top_alternatives_are_the_most_likely_characters(trained_dir):
    loaded = load_model(trained_dir)
    decoder = SlotDecoder(loaded.model, 2)
    decoder.add(prompt_ids(loaded.vocab, "the"), SamplingParams(temperature=0.0), 1, top=True)
    result = decoder.launch().result()
    top = result.top(0, 5)
    assert len(top) == 5 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    assert (result.ids[0], result.logprobs[0]) == top[0]  # greedy takes the most likely


@torch.inference_mode()
def test_a_fed_prompt_draws_the_same_noise_as_a_prefilled_one(trained_dir):
    """Whether a prompt rides the step or is prefilled, the first character drawn uses the
    sequence's first noise value: greedy-free draws agree between the two paths."""
    loaded = load_model(trained_dir)
    prompt = prompt_ids(loaded.vocab, "the king")
    params = SamplingParams(temperature=1.0, seed=9)
    fed = decode_alone(loaded.model, prompt, params, 9, 10, 2, feed_prompts=True)
    prefilled = decode_alone(loaded.model, prompt, params, 9, 10, 2, feed_prompts=False)
    assert fed[0] == prefilled[0]
    torch.testing.assert_close(torch.tensor(fed[1]), torch.tensor(prefilled[1]), rtol=1e-4, atol=1e-4)


def test_a_batch_that_does_not_fit_is_refused_before_allocating():
    model = build_model("gpt", {"vocab_size": 5, "block_size": 4096, "n_layer": 8, "n_head": 8, "n_embd": 512})
    with pytest.raises(DecoderMemoryError, match=r"4096 rows of decode state need \d+\.\d+ GiB on cpu"):
        SlotDecoder(model, 4096)


@torch.inference_mode()
def test_warm_up_leaves_no_row_active_and_decoding_works_after(trained_dir):
    loaded = load_model(trained_dir)
    decoder = SlotDecoder(loaded.model, 4)
    decoder.warm_up([loaded.vocab.start_id] * 8)
    assert decoder.active == 0
    params = SamplingParams(temperature=0.7, seed=3)
    decoder.add(prompt_ids(loaded.vocab, "the"), params, 3)
    ids = [decoder.launch().result().ids[0] for _ in range(25)]
    assert ids == decode_alone(loaded.model, prompt_ids(loaded.vocab, "the"), params, 3, 25)[0]


@MODES
@torch.inference_mode()
def test_prompts_of_one_length_prefilled_together_decode_as_if_alone(trained_dir, mode):
    """On a CPU one prefill call takes a group of equal-length prompts (long enough not to be fed
    through the step on CUDA); each sequence still decodes as it would alone."""
    loaded = load_model(trained_dir)
    texts = [LONG_PROMPT, LONG_PROMPT.replace("king", "lord"), LONG_PROMPT.upper().lower()[::-1]]
    group = [NewSequence(prompt_ids(loaded.vocab, t), SamplingParams(temperature=0.9, seed=s), s)
             for s, t in enumerate(texts)]
    decoder = SlotDecoder(loaded.model, 4, **mode)
    assert decoder.add_group(group) == 0 and decoder.active == 3
    produced, _ = draw(decoder, [0, 1, 2], 20)
    for sequence, ids in zip(group, produced, strict=True):
        alone, _ = decode_alone(loaded.model, sequence.prompt, sequence.params, sequence.seed, 20, 4, **mode)
        assert ids[:20] == alone


@MODES
@torch.inference_mode()
def test_a_row_without_controls_is_the_same_whether_a_neighbour_uses_them(trained_dir, mode):
    """A step runs the sampling controls only when some row uses them (on CUDA: the other graph);
    a row that uses none comes out the same either way."""
    loaded = load_model(trained_dir)
    plain = SamplingParams(temperature=1.0, seed=4)
    controlled = SamplingParams(temperature=1.0, repetition_penalty=1.4, min_p=0.05, typical_p=0.8,
                                presence_penalty=0.5, logit_bias=((1, -3.0),))
    ids = prompt_ids(loaded.vocab, "the king")
    decoder = SlotDecoder(loaded.model, 3, **mode)
    row = decoder.add(ids, plain, 4)
    decoder.add(prompt_ids(loaded.vocab, "war"), controlled, 8)
    [beside], _ = draw(decoder, [row], 25)
    assert beside == decode_alone(loaded.model, ids, plain, 4, 25, 3, **mode)[0]


@torch.inference_mode()
def test_a_decoder_whose_gpt_attends_with_the_triton_kernel_draws_as_with_sdpa(tiny_models, monkeypatch):
    """The fixed-shape decoder, rows of different lengths past the window, the kernel interpreted."""
    require_triton()
    loaded = load_model(tiny_models / "tiny-gpt")
    ids = prompt_ids(loaded.vocab, "the king")
    runs = {}
    for attention in ("sdpa", "triton"):
        monkeypatch.setattr(base, "DECODE_ATTENTION", attention)
        runs[attention] = decode_alone(loaded.model, ids, SamplingParams(temperature=0.9, seed=4), 4, 30, 3,
                                       **CUDA_LIKE)
        assert loaded.model.attention_kernel == (attention == "triton")
    assert runs["triton"][0] == runs["sdpa"][0]
    torch.testing.assert_close(runs["triton"][1], runs["sdpa"][1], rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_a_step_that_fails_to_compile_falls_back_to_the_step_as_written(trained_dir, monkeypatch, caplog):
    """Fault injection: torch.compile raises. The decoder says why in its report and the log, and
    decodes what a decoder that never tried decodes."""
    loaded = load_model(trained_dir)

    def failing_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", failing_compile)
    decoder = SlotDecoder(loaded.model, 4, compile=True, **CUDA_LIKE)
    decoder.warm_up([loaded.vocab.start_id] * 8)
    assert decoder.report["compiled"] is False and "no compiler here" in str(decoder.report["compile_error"])
    assert "torch.compile failed" in caplog.text
    params, prompt = SamplingParams(temperature=0.7, seed=3), prompt_ids(loaded.vocab, "the")
    assert decode_with(decoder, prompt, params, 3, 25) == decode_alone(loaded.model, prompt, params, 3, 25, 4,
                                                                       **CUDA_LIKE)


@MODES
@torch.inference_mode()
def test_a_rows_logits_in_a_batch_equal_its_logits_alone_up_to_rounding_on_a_cpu(trained_dir, mode):
    """Exactly what docs/api-semantics.md's "Determinism" promises. The fixed-shape step (CUDA's, run here on the
    CPU) gives a row's log-probabilities bit for bit alone and among 12 others; the active-rows step
    a CPU uses changes its matrix shapes with the batch, so they may differ, by rounding and never
    more than 1e-4. Greedy, past the tiny gpt's window; the others sample with their own seeds."""
    loaded = load_model(trained_dir)
    vocab = loaded.vocab

    def alternatives(others: int) -> tuple[list[int], list[list[float]]]:
        decoder = SlotDecoder(loaded.model, 16, **mode)
        for seed in range(others):
            neighbour = ["war", "my lord and", "", "the"][seed % 4]
            decoder.add(prompt_ids(vocab, neighbour), SamplingParams(temperature=1.0), seed)
        row = decoder.add(prompt_ids(vocab, "the king"), SamplingParams(temperature=0.0), 1, top=True)
        [ids], [top] = draw(decoder, [row], 40, top=10)
        return ids, top

    (alone_ids, alone), (batched_ids, batched) = alternatives(0), alternatives(12)
    assert alone_ids == batched_ids
    gap = (torch.tensor(alone) - torch.tensor(batched)).abs().max().item()
    if mode:  # fixed shapes
        assert gap == 0, f"the fixed-shape step is not batch invariant: {gap:.1e}"
    else:
        assert gap <= 1e-4, f"a row's log-probabilities moved by {gap:.1e} in a batch: more than rounding"
