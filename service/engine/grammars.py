"""Regular expressions compiled into `charlm.grammar.Automaton`s over a model's characters, cached.

outlines-core builds the automaton: a DFA over UTF-8 bytes, walked for each character of the
vocabulary, so any Unicode text works. The front end compiles to validate a request (its errors
become 422s) and the engine's process compiles again on a miss: what crosses to the engine is
the regular expression, never the table. Both look in this module's cache first, keyed by the
expression and the vocabulary.
"""

from __future__ import annotations

import collections
import hashlib
import re
import sys
import threading

import numpy as np
from outlines_core import Index, Vocabulary

from charlm.grammar import Automaton
from charlm.vocab import Vocab

MAX_GRAMMAR_STATES = 4096  # per grammar; a decoder's table holds charlm.grammar.GRAMMAR_STATES in all
CACHED_GRAMMARS = 256
MAX_SHOWN = 10  # missing characters named in a message
CONTROL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
ASCII = [chr(c) for c in range(32, 127)] + ["\n", "\t"]


class GrammarError(ValueError):
    """A grammar the model cannot follow, with a message that says why."""


_cache: collections.OrderedDict[str, Automaton] = collections.OrderedDict()
_cache_lock = threading.Lock()


def grammar_key(regex: str, vocab: Vocab) -> str:
    return hashlib.sha256(f"{vocab.fingerprint}\n{regex}".encode()).hexdigest()


def compile_regex(regex: str, vocab: Vocab) -> Automaton:
    """The automaton of `regex` over `vocab`'s characters (cached); raises GrammarError."""
    key = grammar_key(regex, vocab)
    with _cache_lock:
        if (automaton := _cache.get(key)) is not None:
            _cache.move_to_end(key)
            return automaton
    automaton = build(regex, vocab, key)  # outside the lock: another grammar may compile meanwhile
    with _cache_lock:
        _cache[key] = automaton
        while len(_cache) > CACHED_GRAMMARS:
            _cache.popitem(last=False)
    return automaton


def build(regex: str, vocab: Vocab, key: str) -> Automaton:
    extra = sorted((set(ASCII) | literal_characters(regex)) - set(vocab.chars))
    widened = over(regex, vocab.chars + extra, key, regex)
    automaton = widened and trimmed(widened.transitions[:, : len(vocab)], widened.accepting, key, regex)
    if automaton is None:
        raise GrammarError(why_empty(widened, vocab, extra))
    if automaton.states > MAX_GRAMMAR_STATES:
        raise GrammarError(f"the grammar is too large: its automaton has {automaton.states} states over this "
                           f"model's characters; the limit is {MAX_GRAMMAR_STATES}")
    if automaton.shortest == 0 and not (automaton.transitions[0] >= 0).any():
        raise GrammarError("the grammar accepts only the empty text: there is nothing to generate")
    return automaton


def over(regex: str, chars: list[str], key: str, source: str = "") -> Automaton | None:
    """The automaton of `regex` over `chars` (ids their positions), trimmed to the states from which
    an accepted text can still be reached; None when no text over `chars` is accepted.

    outlines-core refuses a vocabulary that leaves some state of the expression with no way on, so
    the caller widens the model's characters with the expression's own and ASCII's, then keeps the
    model's columns (`build`). Its index (0.2) also drops the moves out of an accepting state that
    lead to a state that is not: the expression is followed by an end mark, a character of no
    vocabulary, so that only the state after the mark accepts; a state accepts here when the mark
    leads from it to that state."""
    mark = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in chars)  # a private-use character
    end = len(chars) + 1  # outlines-core marks accepting states with an end-of-text token of its own
    tokens = {c: [i] for i, c in enumerate([*chars, mark])}
    try:
        index = Index(f"(?:{regex}){mark}", Vocabulary(end, tokens))
    except BaseException as exc:
        if not library_failure(exc):
            raise
        if "incompatible" in str(exc):  # some state has no way on over these characters
            return None
        raise GrammarError(f"the regular expression does not compile: {python_reason(regex) or exc}") from None
    transitions = {state: {c: s for c, s in moves.items() if c != end}
                   for state, moves in index.get_transitions().items()}
    finals = set(index.get_final_states())
    numbering = {index.get_initial_state(): 0}  # breadth-first from the initial state
    order = [index.get_initial_state()]
    for state in order:
        for following in transitions.get(state, {}).values():
            if following not in numbering:
                numbering[following] = len(order)
                order.append(following)
    table = np.full((len(order), len(chars)), -1, dtype=np.int32)
    accepting = np.zeros(len(order), dtype=bool)
    for state, number in numbering.items():
        for char_id, following in transitions.get(state, {}).items():
            if char_id < len(chars):
                table[number, char_id] = numbering[following]
            elif following in finals:  # the end mark: the text may end here
                accepting[number] = True
    return trimmed(table, accepting, key, source)


def trimmed(table: np.ndarray, accepting: np.ndarray, key: str, source: str) -> Automaton | None:
    """Without the states that cannot be reached from the initial one or from which no accepting state
    can be reached (transitions to them forbidden), renumbered; None when nothing is accepted."""
    live = accepting.copy()  # states from which an accepting state can be reached
    while True:
        reaches = live | (np.where(table >= 0, live[np.maximum(table, 0)], False)).any(axis=1)
        if (reaches == live).all():
            break
        live = reaches
    if not live[0]:
        return None
    kept = np.where((table >= 0) & live[np.maximum(table, 0)], table, -1)
    reached = np.zeros(len(table), dtype=bool)
    reached[0] = True
    frontier = [0]
    while frontier:
        following = np.unique(kept[frontier])
        following = following[following >= 0]
        frontier = [int(s) for s in following if not reached[s]]
        reached[frontier] = True
    numbers = np.cumsum(reached) - 1
    kept = kept[reached]
    kept = np.where(kept >= 0, numbers[np.maximum(kept, 0)], -1)
    return Automaton(key, kept.astype(np.int32), accepting[reached], source)


def why_empty(widened: Automaton | None, vocab: Vocab, extra: list[str]) -> str:
    """Why no text over the vocabulary matches: the characters outside it on a shortest text the
    grammar accepts, when there is one, else that nothing matches at all."""
    if widened is None:
        return "no text the model can write satisfies the grammar"
    text = widened.shortest_text
    assert text is not None  # the widened grammar accepts something: only the vocabulary was missing
    needed = sorted({extra[i - len(vocab)] for i in text if i >= len(vocab)})
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in needed[:MAX_SHOWN])
    more = f" and {len(needed) - MAX_SHOWN} more" if len(needed) > MAX_SHOWN else ""
    return (f"the grammar needs characters the model does not have: {shown}{more} (every text it accepts uses "
            f"some of them; its shortest is {''.join((vocab.chars + extra)[i] for i in text)!r})")


def library_failure(exc: BaseException) -> bool:
    """Whether outlines-core failed (a ValueError, or a Rust panic: pyo3's PanicException derives from
    BaseException), rather than the process being asked to stop."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def python_reason(regex: str) -> str | None:
    """Python's reading of why a regular expression is malformed, which says more than the Rust
    builder's (None when Python's syntax accepts it)."""
    try:
        re.compile(regex)
    except re.error as exc:
        return str(exc)
    except (OverflowError, RecursionError):
        return None
    return None


def literal_characters(regex: str) -> set[str]:
    """Characters a regular expression names: those written in it, and those written as escapes
    (\\n, \\t, \\xHH, \\x{H..}, \\uHHHH, \\u{H..})."""
    found = {c for c in regex if c.isprintable()}
    found |= {CONTROL_ESCAPES[letter] for letter in re.findall(r"\\([nrt])", regex)}
    for code in re.findall(r"\\[xu]\{([0-9a-fA-F]{1,6})\}|\\x([0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})", regex):
        value = int("".join(code), 16)
        if value <= sys.maxunicode:
            found.add(chr(value))
    return found
