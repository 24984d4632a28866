"""Regular expressions compiled over a model's characters accept exactly what Python's `re` matches,
and the compiler's refusals say why."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import service.engine.grammars as grammars
from charlm.vocab import Vocab
from service.engine.grammars import GrammarError, compile_regex

VOCAB = Vocab([*"abcking ,\n", "я"])
REGEXES = [
    "(ab)?", "(ab)*c", "((king|ab) )*(king|ab)", "[a-c]+,?", "a{2,4}(b|c){0,2}", "(king|kin|k)(g|)", "[^ ]+( [^ ]+)*",
    "(я|a)+\\n", "c?(ab|ba)*a?",
]


@pytest.mark.parametrize("regex", REGEXES)
@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abcking ,\nя", max_size=12))
def test_the_automaton_accepts_what_python_matches(regex, text):
    automaton = compile_regex(regex, VOCAB)
    ids = VOCAB.encode(text).tolist()
    assert automaton.accepts(ids) == bool(re.fullmatch(regex, text))
    if automaton.walk(ids) is not None:  # a live prefix can still be completed
        assert automaton.shortest is not None


def test_compiled_grammars_are_cached_by_expression_and_vocabulary():
    assert compile_regex("(ab)+", VOCAB) is compile_regex("(ab)+", VOCAB)
    assert compile_regex("(ab)+", VOCAB) is not compile_regex("(ab)+", Vocab(list("ab")))


@pytest.mark.parametrize("regex, message", [
    ("(ab", "does not compile: missing ), unterminated subpattern"),
    ("abz", "needs characters the model does not have: 'z' (U+007A)"),
    ("ab(z|q)", "'q' (U+0071) (every text it accepts uses some of them; its shortest is 'abq')"),
    ("a\\x{20AC}", "'€' (U+20AC)"),
    ("[^\\s\\S]", "no text the model can write satisfies the grammar"),
    ("()", "accepts only the empty text"),
])
def test_refusals_say_why(regex, message):
    with pytest.raises(GrammarError, match=re.escape(message)):
        compile_regex(regex, VOCAB)


def test_a_grammar_over_too_many_states_is_refused(monkeypatch):
    monkeypatch.setattr(grammars, "MAX_GRAMMAR_STATES", 5)
    with pytest.raises(GrammarError, match="too large: its automaton has 8 states over this model's characters; "
                                           "the limit is 5"):
        compile_regex("abcabca", VOCAB)
