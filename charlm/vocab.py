"""Character vocabulary: Unicode code points <-> integer ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

VOCAB_FORMAT = 1
# nanoGPT starts unconditional samples from a newline; we do the same when the
# corpus has one, and otherwise fall back to the first character of the vocabulary.
PREFERRED_START_CHAR = "\n"
MAX_POSITIONS_SHOWN = 5


class UnknownCharactersError(ValueError):
    """Text holds characters the vocabulary cannot encode.

    `unknown` maps each such character to the positions where it occurs.
    """

    def __init__(self, unknown: dict[str, list[int]]):
        self.unknown = unknown
        parts = []
        for char, positions in unknown.items():
            shown = ", ".join(str(p) for p in positions[:MAX_POSITIONS_SHOWN])
            hidden = len(positions) - MAX_POSITIONS_SHOWN
            more = f" and {hidden} more" if hidden > 0 else ""
            parts.append(f"{char!r} (U+{ord(char):04X}) at {shown}{more}")
        super().__init__(
            f"{len(unknown)} character(s) not in the model's vocabulary: " + "; ".join(parts)
        )


class Vocab:
    """An ordered set of characters; a character's id is its index."""

    def __init__(self, chars: Iterable[str], start_char: str | None = None):
        self.chars: list[str] = list(chars)
        if not self.chars:
            raise ValueError("a vocabulary needs at least one character")
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("every vocabulary entry must be exactly one character")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("vocabulary characters must be unique")
        self._ids = {c: i for i, c in enumerate(self.chars)}
        if start_char is None:
            start_char = PREFERRED_START_CHAR if PREFERRED_START_CHAR in self._ids else self.chars[0]
        if start_char not in self._ids:
            raise ValueError(f"start character {start_char!r} is not in the vocabulary")
        self.start_char = start_char

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The sorted set of the characters of `text`."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self._ids

    @property
    def start_id(self) -> int:
        return self._ids[self.start_char]

    def unknown_characters(self, text: str) -> dict[str, list[int]]:
        """Each character of `text` outside the vocabulary, with its positions."""
        unknown: dict[str, list[int]] = {}
        for position, char in enumerate(text):
            if char not in self._ids:
                unknown.setdefault(char, []).append(position)
        return unknown

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text` as an int64 array; raises UnknownCharactersError."""
        ids = self._ids
        try:
            return np.fromiter((ids[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            raise UnknownCharactersError(self.unknown_characters(text)) from None

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"format": VOCAB_FORMAT, "chars": self.chars, "start_char": self.start_char}

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: stored with the weights to catch a mismatched pair."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise ValueError(f"expected a vocabulary of format {VOCAB_FORMAT}")
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise ValueError("'chars' must be a list of one-character strings")
        return cls(chars, data.get("start_char"))

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
