"""Shared pieces of the protocol schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_TOP_N = 10


class StrictModel(BaseModel):
    """Unknown fields are refused with a message naming them."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: 0 is not false, "1" not 1


def require_neutral(values: dict[str, Any], neutral: dict[str, tuple[Any, ...]], prefix: str = "") -> None:
    """Fields a protocol defines but charlm does not implement are accepted only at a value
    that changes nothing (what clients send by default); anything else is refused by name."""
    for name, allowed in neutral.items():
        if values.get(name) not in allowed:
            shown = " or ".join("null" if a is None else repr(a) for a in allowed)
            raise ValueError(f"{prefix}{name} is not supported by charlm (use {shown})")


def check_stop(stop: list[str]) -> list[str]:
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ValueError(f"stop strings are at most {MAX_STOP_CHARS} characters")
    if any(not s for s in stop):
        raise ValueError("stop strings must not be empty")
    return stop
