"""Prompts fed through the decode step, one character per step, for the rows of a `SlotDecoder`.

On a GPU a separate prefill call per request costs milliseconds of host time and
stalls every other row; a short prompt instead rides the fixed-shape step: each
step, a row that still has prompt characters takes the next one as its input and
its draw is discarded (and not counted), so a batch of new requests is prefilled
together by the same captured graph that decodes. Device buffers hold each row's
prompt; the host keeps how many characters each row has left, to know which
rows' results are real draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

PROMPT_FEED = 64  # prompts up to this many characters (after the first) ride the step on CUDA


class PromptFeed:
    def __init__(self, rows: int, limit: int, device: torch.device):
        self.limit = limit  # 0: every prompt is prefilled by the caller instead
        width = max(limit, 1)
        self.prompt = torch.zeros(rows, width, dtype=torch.long, device=device)  # the characters to feed
        self.position = torch.zeros(rows, dtype=torch.long, device=device)  # the next one to feed
        self.length = torch.zeros(rows, dtype=torch.long, device=device)
        self.staging = torch.zeros(rows, width, dtype=torch.long, pin_memory=device.type == "cuda")
        self.left = [0] * rows  # host: characters each row has still to feed

    def fits(self, characters: int) -> bool:
        return 0 < characters <= self.limit

    def start(self, row: int, characters: list[int]) -> None:
        """Row `row` feeds `characters` (at most `limit`; none to switch feeding off)."""
        if characters:  # through pinned memory, so that the copy does not wait for the device
            self.staging[row, : len(characters)] = torch.tensor(characters)
            self.prompt[row].copy_(self.staging[row], non_blocking=True)
        self.position[row] = 0
        self.length[row] = len(characters)
        self.left[row] = len(characters)

    def copy_row(self, source: int, target: int) -> None:
        for tensor in (self.prompt, self.position, self.length):
            tensor[target] = tensor[source]
        self.left[target] = self.left[source]

    def feeding(self, rows: int) -> Tensor:
        """(rows,) bool: the rows among [0, rows) whose next input is still a prompt character."""
        return self.position[:rows] < self.length[:rows]

    def next_inputs(self, rows: int, drawn: Tensor, feeding: Tensor) -> Tensor:
        """In the step, after sampling rows [0, rows): each row's next input, its next prompt
        character or what it drew. Fixed shapes, no host synchronisation."""
        position = self.position[:rows]
        character = self.prompt[:rows].gather(1, position.clamp(max=self.prompt.size(1) - 1)[:, None])  # (rows, 1)
        position.add_(feeding)
        return torch.where(feeding, character.squeeze(1), drawn)

    def advance(self, rows: int) -> list[bool] | None:
        """Host side of one launched step: which of rows [0, rows) drew a character that counts
        (None: all of them)."""
        if not any(self.left[:rows]):
            return None
        drew = [left == 0 for left in self.left[:rows]]
        self.left[:rows] = [max(0, left - 1) for left in self.left[:rows]]
        return drew
