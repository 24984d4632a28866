"""What a decode step hands the host: one packed tensor per step, copied in one transfer.

Its columns: the drawn id, its log-probability, the row's grammar end flag (`charlm.grammar`:
written only by steps with grammar rows), then the `TOP_ALTERNATIVES` most likely ids and their
log-probabilities. `PendingStep` is a launched step; `StepResult` reads its host copy as arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Columns of a step's packed results: the drawn id, its log-probability, the row's grammar end flag
# (`charlm.grammar`: written only by steps with grammar rows), then TOP_ALTERNATIVES ids and their
# log-probabilities.
ID, LOGPROB, END, TOP = 0, 1, 2, 3


class StepResult:
    """The host copy of one step for rows [0, n): the drawn ids and log-probabilities, each row's
    `TOP_ALTERNATIVES` most likely characters (read before the buffer is reused), and, when a row
    had a grammar, each row's end flag (`ends`, else None)."""

    def __init__(self, values: np.ndarray, top_k: int, grammar: bool = False):
        self.values = values  # (n, TOP + 2K) float32: id, log-prob, end flag, K alternative ids, K log-probs
        self.top_k = top_k
        self.grammar = grammar

    @property
    def id_array(self) -> np.ndarray:
        return self.values[:, ID].astype(np.int32)  # (n,)

    @property
    def logprob_array(self) -> np.ndarray:
        return self.values[:, LOGPROB]  # (n,) float32

    @property
    def end_array(self) -> np.ndarray | None:
        """(n,) int32 end flags (`charlm.grammar`) when a row had a grammar, else None."""
        return self.values[:, END].astype(np.int32) if self.grammar else None

    @property
    def ids(self) -> list[int]:
        return self.id_array.tolist()

    @property
    def logprobs(self) -> list[float]:
        return self.logprob_array.tolist()

    @property
    def ends(self) -> list[int] | None:
        ends = self.end_array
        return None if ends is None else ends.tolist()

    def top_arrays(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The `n` most likely characters of `rows` at this step: ids (R, n) int32, log-probs (R, n)."""
        k = min(n, self.top_k)
        block = self.values[rows]  # (R, TOP + 2K)
        return block[:, TOP : TOP + k].astype(np.int32), block[:, TOP + self.top_k : TOP + self.top_k + k]

    def top(self, row: int, n: int) -> list[tuple[int, float]]:
        """The `n` most likely characters of `row` at this step, as (id, log-probability)."""
        ids, logprobs = self.top_arrays(np.array([row]), n)
        return list(zip(ids[0].tolist(), logprobs[0].tolist(), strict=True))


class PendingStep:
    """A launched step; `result()` waits for it. `drew[i]` says whether row i drew a character
    (False while it still feeds its prompt); None when every row did."""

    def __init__(self, host: Tensor, rows: int, top_k: int, event: torch.cuda.Event | None,
                 drew: list[bool] | None, grammar: bool = False):
        self.host, self.rows, self.top_k, self.event, self.drew = host, rows, top_k, event, drew
        self.grammar = grammar

    def result(self) -> StepResult:
        if self.event is not None:
            self.event.synchronize()
        return StepResult(self.host[: self.rows].numpy(), self.top_k, self.grammar)
