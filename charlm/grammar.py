"""Grammars over a model's characters: automata as tables, applied to every row of a batch at once.

A grammar (a regular expression, compiled outside charlm) reaches the decoder as an `Automaton`:
a (states x characters) table of next states, -1 where the grammar forbids the character. A
`GrammarTable` holds the automata of a decoder's rows in one table of fixed capacity on the
device, each at its own offset; a row's state is an index into it (`SamplingRows.grammar_state`).
State 0 allows every character and stays 0, so a row without a grammar needs no flag of its own.
A step gathers each row's table row (one gather for the batch), forbids what the grammar forbids,
and after the draw moves each row on. Fixed shapes and no host synchronisation: the table never
moves or grows, so a captured CUDA graph stays valid while grammars come and go.

A character vocabulary has no end-of-text token, so the grammar decides where a text ends: when
a row reaches an accepting state it cannot leave, its text is complete (`COMPLETES`); in an
accepting state it could leave, it ends before drawing when the model gives the characters the
grammar forbids more probability than those it allows (`ENDS_BEFORE`): the forbidden mass
stands for "the text is over".
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np
import torch
from torch import Tensor

FREE_STATE = 0  # the state of rows without a grammar: every character allowed, never left
GRAMMAR_STATES = 16384  # a decoder's table: states of all the grammars its rows use at once
# A row's end after a step (a column of the step's packed results).
GOES_ON, COMPLETES, ENDS_BEFORE = 0, 1, 2


class GrammarTableFull(RuntimeError):
    """The running grammars leave no room in the table for another one."""


@dataclasses.dataclass(frozen=True, eq=False)
class Automaton:
    """A deterministic automaton over a vocabulary's character ids; state 0 is the initial state.

    `key` names the grammar and the vocabulary (a decoder shares one copy between its rows);
    `source` is the grammar as written (a regular expression), for whoever compiles it again."""

    key: str
    transitions: np.ndarray  # (S, V) int32: the next state, -1 where the character is forbidden
    accepting: np.ndarray  # (S,) bool
    source: str = ""

    def __post_init__(self) -> None:
        states = self.transitions.shape[0]
        if self.transitions.ndim != 2 or self.accepting.shape != (states,) or states == 0:
            raise ValueError("an automaton needs a (states, vocabulary) table and one accepting flag per state")
        if self.transitions.min() < -1 or self.transitions.max() >= states:
            raise ValueError("an automaton's transitions must name its own states (or -1)")

    @property
    def states(self) -> int:
        return int(self.transitions.shape[0])

    @functools.cached_property
    def complete(self) -> np.ndarray:
        """(S,) bool: accepting states with no way on (a text that reaches one is finished)."""
        return self.accepting & (self.transitions < 0).all(axis=1)

    @functools.cached_property
    def shortest_text(self) -> list[int] | None:
        """The character ids of a shortest text the automaton accepts (None: it accepts nothing)."""
        parent: dict[int, tuple[int, int]] = {}
        queue, seen = collections.deque([0]), {0}
        while queue:
            state = queue.popleft()
            if self.accepting[state]:
                text = []
                while state:
                    state, char_id = parent[state]
                    text.append(char_id)
                return text[::-1]
            for char_id, following in enumerate(self.transitions[state].tolist()):
                if following >= 0 and following not in seen:
                    seen.add(following)
                    parent[following] = (state, char_id)
                    queue.append(following)
        return None

    @property
    def shortest(self) -> int | None:
        """The length of the shortest accepted text (None: the grammar accepts nothing)."""
        text = self.shortest_text
        return None if text is None else len(text)

    def walk(self, ids: list[int]) -> int | None:
        """The state after `ids` from the start (None: the grammar forbids them)."""
        state = 0
        for char_id in ids:
            state = int(self.transitions[state, char_id])
            if state < 0:
                return None
        return state

    def accepts(self, ids: list[int]) -> bool:
        state = self.walk(ids)
        return state is not None and bool(self.accepting[state])


@dataclasses.dataclass
class _Placement:
    offset: int
    size: int
    users: int


class GrammarTable:
    """The automata of a decoder's rows in one (capacity, V) table on the device.

    Automata are placed on first use and stay while rows use them; one no row uses stays too, for
    the next request with the same grammar, until its room is needed (least recently used first).
    Not thread-safe: the decoder's thread owns it."""

    def __init__(self, capacity: int, vocab_size: int, device: torch.device | str):
        self.capacity = capacity
        self.next_state = torch.full((capacity, vocab_size), -1, dtype=torch.int32, device=device)  # (S, V)
        self.next_state[FREE_STATE] = FREE_STATE
        self.accepting = torch.zeros(capacity, dtype=torch.bool, device=device)  # (S,)
        self.complete = torch.zeros(capacity, dtype=torch.bool, device=device)  # (S,)
        self._placed: collections.OrderedDict[str, _Placement] = collections.OrderedDict()  # oldest use first

    @property
    def states_in_use(self) -> int:
        return sum(p.size for p in self._placed.values() if p.users)

    def acquire(self, automaton: Automaton) -> int:
        """A row starts with `automaton`: its initial state in the table (placed there if need be).
        Raises GrammarTableFull when the automata in use leave no room."""
        placement = self._placed.get(automaton.key)
        if placement is None:
            placement = self._place(automaton)
        placement.users += 1
        self._placed.move_to_end(automaton.key)
        return placement.offset

    def release(self, key: str) -> None:
        """A row that used the automaton `key` is gone."""
        self._placed[key].users -= 1

    def acquire_all(self, automata: list[Automaton | None]) -> list[int]:
        """`acquire` for several rows (0 for those without a grammar): all or, raising, none."""
        starts: list[int] = []
        try:
            for automaton in automata:
                starts.append(self.acquire(automaton) if automaton is not None else FREE_STATE)
        except BaseException:
            self.release_all(automata[: len(starts)])
            raise
        return starts

    def release_all(self, automata: list[Automaton | None]) -> None:
        for automaton in automata:
            if automaton is not None:
                self.release(automaton.key)

    def _place(self, automaton: Automaton) -> _Placement:
        offset = self._free_offset(automaton.states)
        while offset is None:
            unused = next((key for key, p in self._placed.items() if not p.users), None)
            if unused is None:
                raise GrammarTableFull(
                    f"the grammar's {automaton.states} states do not fit: running requests' grammars use "
                    f"{self.states_in_use} of the table's {self.capacity - 1}; retry when some have finished")
            del self._placed[unused]
            offset = self._free_offset(automaton.states)
        table = automaton.transitions.astype(np.int64)
        table = np.where(table >= 0, table + offset, -1)  # states numbered within the whole table
        rows = slice(offset, offset + automaton.states)
        self.next_state[rows] = torch.from_numpy(table.astype(np.int32)).to(self.next_state.device)
        self.accepting[rows] = torch.from_numpy(automaton.accepting).to(self.accepting.device)
        self.complete[rows] = torch.from_numpy(automaton.complete).to(self.complete.device)
        placement = self._placed[automaton.key] = _Placement(offset, automaton.states, 0)
        return placement

    def _free_offset(self, size: int) -> int | None:
        """The first gap of `size` states after the free state, if any."""
        start = FREE_STATE + 1
        for placement in sorted(self._placed.values(), key=lambda p: p.offset):
            if placement.offset - start >= size:
                return start
            start = placement.offset + placement.size
        return start if self.capacity - start >= size else None

    def constrain(self, logits: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Forbid, in logits (B, V) float32, what each row's state (B,) forbids.

        Returns the logits with forbidden characters at -inf, each row's next states (B, V), and
        (B,) bool: the rows whose text ends here, before drawing (an accepting state where the model
        gives the forbidden characters more probability than the allowed ones). A row with nothing
        allowed (past its end, waiting to leave) draws from every character: its draw is dropped."""
        following = self.next_state.index_select(0, state)  # (B, V) int32: the one gather
        allowed = following >= 0  # (B, V)
        allowed_mass = (logits.softmax(dim=-1) * allowed).sum(dim=-1)  # (B,)
        ends = self.accepting.index_select(0, state) & (allowed_mass < 0.5)
        allowed |= ~allowed.any(dim=-1, keepdim=True)
        return logits.masked_fill(~allowed, float("-inf")), following, ends

    def advance(self, state: Tensor, following: Tensor, ids: Tensor, counts: Tensor | None) -> Tensor:
        """Move each row's state (B,), in place, by its drawn character ids (B,) (only the rows where
        `counts` is true, when given); returns (B,) bool: the rows whose text is now complete."""
        moved = following.gather(1, ids[:, None]).squeeze(1).long()  # (B,)
        keep = moved < 0 if counts is None else (moved < 0) | ~counts
        state.copy_(torch.where(keep, state, moved))
        return self.complete.index_select(0, state)


def end_flags(ends_before: Tensor, completes: Tensor) -> Tensor:
    """(B,) float32 of GOES_ON, COMPLETES or ENDS_BEFORE, for the packed results of a step."""
    return torch.where(ends_before, float(ENDS_BEFORE), completes.float() * COMPLETES)
