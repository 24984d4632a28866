"""The messages between an engine process and its front ends, over one Unix socket per front end.

Each message is framed as `multiprocessing.connection` frames it (a 4-byte big-endian length, then
the payload), so the engine side reads and writes with `Connection`, and a front end parses the
same frames from an asyncio stream. Nothing is pickled: records travel as MessagePack (msgspec),
decoded into the types they were sent as. Commands (front end to engine) are small lists
(`encode`, `decode`). What the engine sends starts with one byte saying what it is:

- `S`, one step's events for that front end: a fixed header, then the arrays of `StepEvents`
  back to back (no Python object per character), then, only when there are any, the sequences that
  ended and what the metrics counted;
- `A`, the answer to a submission (admitted, or refused with the reason);
- `L`, the engine's life: started (with what it took and what it serves), failed, ended.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np

from service.engine.events import StepEvents
from service.engine.metrics import MetricsSnapshot
from service.engine.sequences import Finished

STEP, ADMISSION, LIFE = b"S", b"A", b"L"
# Segments, characters, characters with alternatives, alternatives per character, the engine's
# active and queued sequences, and whether a pickled tail (ends, metrics) follows.
STEP_HEADER = struct.Struct("<IIIIII?")
FRAME_HEADER = struct.Struct("!i")
T = TypeVar("T")


def _encode_other(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot send {type(value).__name__}")


def _decode_other(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot receive {kind}")


ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_other)
TAIL = msgspec.msgpack.Decoder(tuple[list[Finished], MetricsSnapshot | None])


def pack(value: object) -> bytes:
    """Records (dataclasses, lists, numbers, strings, paths) as MessagePack."""
    return ENCODER.encode(value)


def unpack(data: bytes | memoryview, kind: type[T] | Any = Any) -> T:
    """What `pack` made, as `kind` (dataclasses rebuilt, fields checked)."""
    return msgspec.msgpack.decode(data, type=kind, dec_hook=_decode_other)


def convert(value: object, kind: type[T] | Any) -> T:
    """A part of an untyped message (lists, maps) as `kind`."""
    return msgspec.convert(value, kind, dec_hook=_decode_other)


@dataclasses.dataclass
class StepMessage:
    events: StepEvents
    active: int  # sequences the engine runs now, for every front end together
    queued: int
    metrics: MetricsSnapshot | None  # what it counted, sent to one front end only


def encode_step(events: StepEvents, active: int, queued: int, metrics: MetricsSnapshot | None) -> bytes:
    """One step's events for one front end (its `clients` column stays behind: it is this front end)."""
    s, c = len(events.keys), len(events.ids)
    a, k = events.top_ids.shape if len(events.top_index) else (0, 0)
    tail = pack((events.finished, metrics)) if events.finished or metrics is not None else b""
    parts = [
        STEP, STEP_HEADER.pack(s, c, a, k, active, queued, bool(tail)),
        events.keys.astype("<i8", copy=False).tobytes(), events.counts.astype("<i4", copy=False).tobytes(),
        events.ids.astype("<i4", copy=False).tobytes(), events.logprobs.astype("<f4", copy=False).tobytes(),
    ]
    if a:
        parts += [events.top_index.astype("<i4", copy=False).tobytes(),
                  events.top_ids.astype("<i4", copy=False).tobytes(),
                  events.top_logprobs.astype("<f4", copy=False).tobytes()]
    parts.append(tail)
    return b"".join(parts)


def decode_step(payload: bytes | memoryview) -> StepMessage:
    """The arrays are views of `payload` (no copy): they live as long as the message."""
    view = memoryview(payload)
    s, c, a, k, active, queued, has_tail = STEP_HEADER.unpack_from(view, 1)
    offset = 1 + STEP_HEADER.size

    def take(dtype: str, count: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        nonlocal offset
        array = np.frombuffer(view, dtype, count, offset)
        offset += array.nbytes
        return array.reshape(shape) if shape is not None else array

    keys, counts = take("<i8", s), take("<i4", s)
    ids, logprobs = take("<i4", c), take("<f4", c)
    top_index = take("<i4", a)
    top_ids, top_logprobs = take("<i4", a * k, (a, k)), take("<f4", a * k, (a, k))
    finished: list[Finished] = []
    metrics = None
    if has_tail:
        finished, metrics = TAIL.decode(view[offset:])
    events = StepEvents(keys, np.zeros(s, np.int32), counts, ids, logprobs, top_index, top_ids, top_logprobs,
                        finished)
    return StepMessage(events, active, queued, metrics)


def encode(kind: bytes, *values: Any) -> bytes:
    """An admission answer or a life event."""
    return kind + pack(values)


def decode(payload: bytes | memoryview) -> list[Any]:
    values: list[Any] = unpack(memoryview(payload)[1:])
    return values


def frame(payload: bytes) -> bytes:
    """A command as `Connection.recv` reads it (the front end writes to its socket directly)."""
    return FRAME_HEADER.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into the payloads of `multiprocessing.connection` frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        payloads, offset, end = [], 0, len(self.buffer)
        while end - offset >= 4:
            (size,) = FRAME_HEADER.unpack_from(self.buffer, offset)
            start = offset + 4
            if size == -1:  # over 2 GiB: an 8-byte length follows
                if end - offset < 12:
                    break
                (size,) = struct.unpack_from("!Q", self.buffer, offset + 4)
                start = offset + 12
            if end < start + size:
                break
            payloads.append(bytes(self.buffer[start : start + size]))
            offset = start + size
        del self.buffer[:offset]
        return payloads
