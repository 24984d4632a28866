"""A front end's stream buffers and their pacing: characters from step messages reach a stream's
writer in order and complete; an idle stream writes each character at once; a stream whose turn
has not come gets everything that arrived meanwhile in one write; a stream interval writes whole
multiples; an end is never held back; a quiet stream gets keep-alives."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.engine.events import StepEvents, StepEventsBuilder
from service.engine.sequences import Finished
from service.engine.stopping import FinishReason
from service.frontend.streams import Pacer, Submission, chunk_ids

pytestmark = pytest.mark.anyio


def message(keys: list[int], ids: list[int]) -> StepEvents:
    """One step's events: one character per key."""
    out = StepEventsBuilder()
    n = len(keys)
    out.add(np.array(keys, np.int64), np.zeros(n, np.int32), np.ones(n, np.int32), np.array(ids, np.int32),
            np.zeros(n, np.float32))
    return out.take()


def end(key: int, produced: int) -> Finished:
    return Finished(FinishReason.LENGTH, "", produced, 1, 0, 0.0, 0.0, 0.1, key=key)


async def collect(submission: Submission) -> list[list[int] | None]:
    """Each update as the ids it carried (None: a keep-alive)."""
    writes: list[list[int] | None] = []
    async for ready in submission.updates():
        writes.append(None if ready is None else [i for s in ready for i in chunk_ids(s.take()[0]).tolist()])
    return writes


def submission_of(pacer: Pacer, interval: int = 1, count: int = 1) -> Submission:
    submission = Submission(count, interval, pacer, lambda keys: None)
    for key, sequence in enumerate(submission.sequences):
        sequence.key = key
    return submission


async def test_an_idle_stream_writes_each_character_as_it_comes():
    submission = submission_of(Pacer(writes_per_s=1e9, keepalive_s=60))
    writer = asyncio.create_task(collect(submission))
    sequence = submission.sequences[0]
    for char in range(5):
        await asyncio.sleep(0.01)  # a step later
        sequence.add(message([0], [char]), 0, 1)
    await asyncio.sleep(0.01)
    sequence.finish(end(0, 5))
    assert await writer == [[0], [1], [2], [3], [4], []]


async def test_characters_that_arrive_before_a_streams_turn_go_out_together():
    """One stream open, 4 writes a second: after its first write, a stream waits 0.25 s for its
    next; the characters of the steps meanwhile go out in that one write, in order."""
    submission = submission_of(Pacer(writes_per_s=4, keepalive_s=60))
    writer = asyncio.create_task(collect(submission))
    sequence = submission.sequences[0]
    await asyncio.sleep(0)
    sequence.add(message([0], [7]), 0, 1)  # the first character: at once
    await asyncio.sleep(0.01)
    for char in range(8):
        sequence.add(message([0], [char]), 0, 1)
        await asyncio.sleep(0.005)
    sequence.finish(end(0, 9))
    writes = await writer
    assert writes[0] == [7]
    assert [i for w in writes[1:] for i in w or ()] == list(range(8))
    assert len(writes) < 9  # grouped: fewer writes than characters


async def test_an_end_is_not_held_back_by_the_pacer():
    submission = submission_of(Pacer(writes_per_s=0.001, keepalive_s=60))  # a turn every 1,000 s
    writer = asyncio.create_task(collect(submission))
    sequence = submission.sequences[0]
    await asyncio.sleep(0)
    sequence.add(message([0], [1]), 0, 1)
    await asyncio.sleep(0.01)
    sequence.add(message([0], [2]), 0, 1)  # waits for a turn that would come in 1,000 s
    sequence.finish(end(0, 2))  # but the end takes it with it now
    assert await asyncio.wait_for(writer, 30) == [[1], [2]]


async def test_a_stream_interval_writes_whole_multiples_and_the_rest_at_the_end():
    submission = submission_of(Pacer(writes_per_s=1e9, keepalive_s=60), interval=3)
    writer = asyncio.create_task(collect(submission))
    sequence = submission.sequences[0]
    for char in range(8):
        sequence.add(message([0], [char]), 0, 1)
        await asyncio.sleep(0.005)
    sequence.finish(end(0, 8))
    writes = await writer
    assert all(len(w) % 3 == 0 for w in writes[:-1] if w) and [i for w in writes for i in w or ()] == list(range(8))


async def test_an_answer_that_is_not_streamed_is_written_once_when_every_sequence_ended():
    submission = submission_of(Pacer(writes_per_s=1e9, keepalive_s=60), interval=0, count=2)
    writer = asyncio.create_task(collect(submission))
    first, second = submission.sequences
    for char in range(3):
        first.add(message([0], [char]), 0, 1)
        second.add(message([1], [10 + char]), 0, 1)
        await asyncio.sleep(0.005)
    first.finish(end(0, 3))
    await asyncio.sleep(0.01)
    second.finish(end(1, 3))
    assert await writer == [[0, 1, 2, 10, 11, 12]]


async def test_a_quiet_stream_gets_keep_alives_and_then_its_characters():
    submission = submission_of(Pacer(writes_per_s=1e9, keepalive_s=0.02))
    writer = asyncio.create_task(collect(submission))
    await asyncio.sleep(0.1)
    sequence = submission.sequences[0]
    sequence.add(message([0], [3]), 0, 1)
    sequence.finish(end(0, 1))
    writes = await writer
    assert None in writes and writes[-1] == [3]


async def test_a_client_that_leaves_cancels_what_still_runs():
    cancelled: list[list[int]] = []
    submission = Submission(2, 1, Pacer(writes_per_s=1e9, keepalive_s=60), cancelled.append)
    for key, sequence in enumerate(submission.sequences):
        sequence.key = key
    writer = asyncio.create_task(collect(submission))
    submission.sequences[0].finish(end(0, 0))
    await asyncio.sleep(0.01)
    submission.client_gone()
    await writer
    assert cancelled == [[1]]
