"""Corpus reading, the train/validation split, and the two ways of batching it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


class DataError(Exception):
    """The data file cannot be used; the message says why."""


def read_corpus(path: Path) -> str:
    """The whole text of a UTF-8 file, refusing missing, empty and non-UTF-8 files."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data file {path} is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read ({exc.strerror})") from None
    if not raw:
        raise DataError(f"data file {path} is empty")
    try:
        return decode_corpus(raw)
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


def decode_corpus(raw: bytes) -> str:
    """A corpus's text: UTF-8 (UnicodeDecodeError says where not), a byte-order mark dropped, as it is
    not part of the text."""
    return raw.decode("utf-8").removeprefix("\ufeff")


def split(ids: Tensor, val_fraction: float) -> tuple[Tensor, Tensor]:
    """Contiguous split: the first 1 - val_fraction for training, the rest for validation."""
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:]


def check_long_enough(name: str, data: Tensor, seq_len: int) -> None:
    if len(data) < seq_len + 1:
        raise DataError(
            f"the text is too short: its {name} split has {len(data)} characters, but one "
            f"training sequence needs {seq_len + 1} (seq_len + 1); use a longer text or a smaller seq_len"
        )


class WindowBatches:
    """Random windows of the data, nanoGPT style: x (B, T) and the next characters y (B, T)."""

    continues = False

    def __init__(self, data: Tensor, batch_size: int, seq_len: int, seed: int):
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(self.data) - self.seq_len, (self.batch_size,), generator=self.generator)
        offsets = starts[:, None] + torch.arange(self.seq_len + 1)  # (B, T + 1)
        chunk = self.data[offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {}  # a resumed run reseeds instead (see training.session)

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


class StreamBatches:
    """char-rnn style: the data cut into parallel contiguous streams, read chunk by chunk.

    Row b of every batch continues row b of the previous one, so a recurrent
    model can carry its state across batches; `continues` is False on the first
    batch of each pass over the data, when the streams start again.
    With `n_shards` > 1 (data parallel), shard `shard` reads its own streams.
    """

    def __init__(self, data: Tensor, batch_size: int, seq_len: int, shard: int = 0, n_shards: int = 1):
        n_streams = batch_size * n_shards
        stream_len = (len(data) - 1) // n_streams
        self.chunks_per_pass = stream_len // seq_len
        if self.chunks_per_pass < 1:
            raise DataError(
                f"the text is too short for {n_streams} streams of {seq_len + 1} characters; "
                "use a longer text, a smaller batch_size or a smaller seq_len"
            )
        starts = (torch.arange(batch_size) + shard * batch_size) * stream_len  # (B,)
        self.offsets = starts[:, None] + torch.arange(seq_len + 1)  # (B, T + 1)
        self.data = data
        self.seq_len = seq_len
        self.cursor = 0
        self.continues = False

    def next(self) -> tuple[Tensor, Tensor]:
        self.continues = self.cursor % self.chunks_per_pass != 0
        chunk = self.data[self.offsets + (self.cursor % self.chunks_per_pass) * self.seq_len]
        self.cursor += 1
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.cursor = int(state["cursor"])
