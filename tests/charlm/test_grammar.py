"""Grammars on the device: every text a constrained row writes is accepted, rows without a grammar
come out bit for bit as if the table had not run, and the table shares its room among grammars."""

import numpy as np
import pytest
import torch

from charlm.checkpoint import load_model
from charlm.decoding import NewSequence, SlotDecoder
from charlm.generation import prompt_ids
from charlm.grammar import COMPLETES, ENDS_BEFORE, GOES_ON, Automaton, GrammarTable, GrammarTableFull
from charlm.sampling import SamplingParams, SamplingRows, sample

CUDA_LIKE = {"fixed_shape": True, "feed_prompts": True}
MODES = pytest.mark.parametrize("mode", [{}, CUDA_LIKE], ids=["cpu", "cuda-like"])


def words_automaton(words: list[str], chars: list[str], key: str = "words", repeat: bool = False) -> Automaton:
    """The automaton of `words` (a trie; with `repeat`, any sequence of them separated by spaces)."""
    ids = {c: i for i, c in enumerate(chars)}
    table, accepting = [[-1] * len(chars)], [False]
    for word in words:
        state = 0
        for char in word:
            if table[state][ids[char]] < 0:
                table[state][ids[char]] = len(table)
                table.append([-1] * len(chars))
                accepting.append(False)
            state = table[state][ids[char]]
        accepting[state] = True
        if repeat:
            table[state][ids[" "]] = 0
    return Automaton(key, np.array(table, dtype=np.int32), np.array(accepting))


def decode(decoder: SlotDecoder, slots: int, chars: int) -> tuple[list[list[int]], list[int | None]]:
    """Step until every row has ended or drawn `chars` characters: each row's characters and end flag."""
    out: list[list[int]] = [[] for _ in range(slots)]
    ended: list[int | None] = [None] * slots
    while any(e is None and len(o) < chars for e, o in zip(ended, out, strict=True)):
        step = decoder.launch()
        result = step.result()
        assert result.ends is not None
        for row in range(slots):
            if ended[row] is not None or len(out[row]) >= chars or (step.drew is not None and not step.drew[row]):
                continue
            if result.ends[row] == ENDS_BEFORE:
                ended[row] = ENDS_BEFORE
                continue
            out[row].append(result.ids[row])
            if result.ends[row] == COMPLETES:
                ended[row] = COMPLETES
    return out, ended


@MODES
@torch.inference_mode()
def test_every_constrained_text_is_one_the_grammar_accepts(trained_dir, mode):
    loaded = load_model(trained_dir)
    chars = loaded.vocab.chars
    grammar = words_automaton(["king", "queen", "lord", "love"], chars)
    decoder = SlotDecoder(loaded.model, 8, **mode)
    decoder.add_group([NewSequence(prompt_ids(loaded.vocab, "the "), SamplingParams(temperature=1.5, seed=s), s,
                                   grammar=grammar) for s in range(8)])
    out, ended = decode(decoder, 8, 40)
    assert ended == [COMPLETES] * 8  # a word is complete when it cannot go on
    assert {loaded.vocab.decode(ids) for ids in out} <= {"king", "queen", "lord", "love"}
    assert all(grammar.accepts(ids) for ids in out)


@MODES
@torch.inference_mode()
def test_a_constrained_row_draws_the_same_alone_or_beside_others(trained_dir, mode):
    loaded = load_model(trained_dir)
    chars = loaded.vocab.chars
    grammar = words_automaton(["king", "queen", "lord", "love", "war"], chars, repeat=True)
    params = SamplingParams(temperature=1.2, seed=11)
    prompt = prompt_ids(loaded.vocab, "my ")
    alone = SlotDecoder(loaded.model, 1, **mode)
    alone.add_group([NewSequence(prompt, params, 11, grammar=grammar)])
    crowd = SlotDecoder(loaded.model, 4, **mode)
    other = words_automaton(["night", "and"], chars, key="other", repeat=True)
    crowd.add_group([NewSequence(prompt_ids(loaded.vocab, "the king"), SamplingParams(temperature=1.0, seed=5), 5)])
    crowd.add_group([NewSequence(prompt, params, 11, grammar=grammar)])
    crowd.add_group([NewSequence(prompt_ids(loaded.vocab, "war"), SamplingParams(seed=2), 2, grammar=other)])
    by_itself, _ = decode(alone, 1, 30)
    together, _ = decode(crowd, 3, 30)
    assert together[1] == by_itself[0]
    assert grammar.walk(by_itself[0]) is not None and other.walk(together[2]) is not None


def test_rows_without_a_grammar_come_out_the_same_whether_the_table_runs():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)) * 3
    params = [SamplingParams(temperature=t, top_k=k, seed=i) for i, (t, k) in enumerate(
        [(1.0, 0), (0.0, 0), (0.7, 2), (1.3, 0), (1.0, 4), (2.0, 0)])]
    table = GrammarTable(8, 5, "cpu")
    with_table, without = (SamplingRows.of(params, 5, "cpu") for _ in range(2))
    for _ in range(10):
        a, b = sample(logits, with_table, grammar=table), sample(logits, without)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)
        assert a.ends is not None and a.ends.tolist() == [GOES_ON] * 6
    assert with_table.grammar_state.tolist() == [0] * 6


def test_an_accepting_row_ends_when_the_model_prefers_what_the_grammar_forbids():
    """'ab' then optionally more 'b's: after 'ab' the row may stop; it stops when the model gives the
    forbidden characters more than half its probability."""
    automaton = Automaton("ab+", np.array([[1, -1, -1], [-1, 2, -1], [-1, 2, -1]], dtype=np.int32),
                          np.array([False, False, True]))
    table = GrammarTable(8, 3, "cpu")
    start = table.acquire(automaton)
    rows = SamplingRows.of([SamplingParams(temperature=0.0)] * 2, 3, "cpu")
    rows.grammar_state[:] = start + 2  # both after "ab"
    likes_b = torch.tensor([[0.0, 3.0, 0.0]])  # p(b) > 0.5: go on
    likes_c = torch.tensor([[0.0, 0.0, 3.0]])  # p(c) > 0.5, and c is forbidden: the text is over
    draw = sample(torch.cat([likes_b, likes_c]), rows, grammar=table)
    assert draw.ends is not None and draw.ends.tolist() == [GOES_ON, ENDS_BEFORE]
    assert draw.ids[0] == 1


def test_a_row_that_must_draw_takes_an_allowed_character_however_unlikely():
    automaton = Automaton("c", np.array([[-1, -1, 1], [-1, -1, -1]], dtype=np.int32), np.array([False, True]))
    table = GrammarTable(4, 3, "cpu")
    rows = SamplingRows.of([SamplingParams(temperature=1.0, seed=s) for s in range(50)], 3, "cpu")
    rows.grammar_state[:] = table.acquire(automaton)
    draw = sample(torch.tensor([[10.0, 10.0, -20.0]]).expand(50, 3), rows, grammar=table)
    assert draw.ids.tolist() == [2] * 50 and draw.ends is not None and draw.ends.tolist() == [COMPLETES] * 50


def test_the_table_keeps_unused_grammars_until_it_needs_their_room():
    chars = list("ab ")
    one = words_automaton(["ab"], chars, key="one")  # 3 states
    two = words_automaton(["ba"], chars, key="two")
    table = GrammarTable(7, 3, "cpu")  # the free state and two grammars of three
    first = table.acquire(one)
    assert table.acquire(two) == first + 3
    table.release("one")
    assert table.acquire(one) == first  # still there
    with pytest.raises(GrammarTableFull, match="3 states do not fit"):
        table.acquire(words_automaton(["bb"], chars, key="three"))
    table.release("one")
    assert table.acquire(words_automaton(["bb"], chars, key="three")) == first  # one's room, taken over
    assert table.next_state[first, 1].item() == first + 1  # 'b' from three's start


@torch.inference_mode()
def test_a_group_that_does_not_fit_leaves_every_row_free(trained_dir):
    loaded = load_model(trained_dir)
    chars = loaded.vocab.chars
    decoder = SlotDecoder(loaded.model, 4, grammar_states=8)
    small = words_automaton(["king"], chars, key="small")  # 5 states
    large = words_automaton(["queen"], chars, key="large")  # 6 states: no room beside small
    prompt = prompt_ids(loaded.vocab, "the")
    with pytest.raises(GrammarTableFull):
        decoder.add_group([NewSequence(prompt, SamplingParams(), 1, grammar=small),
                           NewSequence(prompt, SamplingParams(), 2, grammar=large)])
    assert decoder.active == 0 and decoder.grammar.states_in_use == 0
    row = decoder.add_group([NewSequence(prompt, SamplingParams(), 3, grammar=large)])
    decoder.remove(row)
    assert decoder.grammar.states_in_use == 0
