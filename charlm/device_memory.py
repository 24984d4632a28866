"""Decode state sized to what the device can hold: a request that cannot fit is refused up front,
naming what it needs and what is free, rather than failing somewhere in the first batch."""

from __future__ import annotations

from pathlib import Path

import torch

from charlm.models import CharModel, DecodeState


class DecoderMemoryError(Exception):
    """The decode state for the requested number of rows does not fit the device."""


def allocate_state(model: CharModel, rows: int, device: torch.device) -> DecodeState:
    """`model.init_state(rows)` on `device`, or DecoderMemoryError saying what did not fit."""
    needed = model.init_state(rows, "meta").nbytes
    free = free_memory(device)
    problem = None
    if free is not None and needed > free:
        problem = f"only {gib(free)} is free"
    else:
        try:
            return model.init_state(rows, device)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            problem = str(exc).splitlines()[0]
    raise DecoderMemoryError(f"{rows - 1} rows of decode state need {gib(needed)} on {device}, but {problem}; "
                             "lower the maximum batch size")


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`, when known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"
