"""The control plane served to several front ends, over one Unix socket (`charlm serve --workers N`).

Each front end connects, receives the table of served models (`service.control.views`) and
follows it: it connects to the engines it names. After every change the control plane sends the
new table to every front end and waits until each says it follows it (`changed`, which the models
directory's watcher awaits before an old version retires); administrators' calls (reload, unload)
arrive from any front end and are answered after the change is followed everywhere. A front end
is told to drain with a message rather than a signal, so that a signal sent to every process of
the server at once still counts as one.

Messages are MessagePack lists in `multiprocessing.connection` frames (`service.engine.wire`):
to a front end ("table", generation, views, default model, facts, reloads, load failures),
("reply", call, ok, result) and ("drain",); from one ("ack", generation) and ("call", call, name,
argument), where a call is reload, unload, or load (a model on standby that a request wants).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from service.control.keeper import EngineKeeper, NoRoomError
from service.control.live_models import ModelWatcher
from service.control.registry import Registry
from service.control.views import ServerFacts, views_of
from service.engine.wire import FRAME_HEADER, frame, pack, unpack

logger = logging.getLogger(__name__)
ACK_TIMEOUT_S = 30.0  # a front end that does not follow a change in this long is left behind (and logged)


async def read_message(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    message: list[Any] = unpack(await reader.readexactly(size))
    return tuple(message)


def write_message(writer: asyncio.StreamWriter, *message: Any) -> None:
    writer.write(frame(pack(message)))


@dataclasses.dataclass(eq=False)
class FrontEndLink:
    writer: asyncio.StreamWriter
    pid: int = 0
    acked: int = -1  # the last table generation it follows
    acks: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class ControlServer:
    def __init__(self, registry: Registry, path: str):
        self.registry = registry
        self.path = path
        self.watcher: ModelWatcher | None = None  # set by the supervisor
        self.keeper: EngineKeeper | None = None
        self.links: set[FrontEndLink] = set()
        self.generation = 0
        self.calls: set[asyncio.Task[None]] = set()  # administrators' calls under way
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, self.path)

    def table(self) -> tuple[Any, ...]:
        registry = self.registry
        return ("table", self.generation, views_of(registry), registry.default_model, ServerFacts.of(registry),
                dict(registry.reloads), dict(registry.load_failures))

    async def changed(self) -> None:
        """Send the current table to every front end; return once each follows it (or timed out)."""
        self.generation += 1
        generation, table = self.generation, self.table()
        for link in list(self.links):
            self._send(link, *table)
        deadline = asyncio.get_running_loop().time() + ACK_TIMEOUT_S
        for link in list(self.links):
            while link.acked < generation and link in self.links:
                link.acks.clear()
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    await asyncio.wait_for(link.acks.wait(), max(0.0, remaining))
                except TimeoutError:
                    logger.error("front end %d did not follow the models' change in %.0f s", link.pid, ACK_TIMEOUT_S)
                    break

    def drain(self) -> None:
        """Tell every front end to drain: stop taking requests, finish what runs, exit."""
        for link in list(self.links):
            self._send(link, "drain")

    @property
    def following(self) -> int:
        """Front ends that follow the current table."""
        return sum(1 for link in self.links if link.acked >= self.generation)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in list(self.links):
            link.writer.close()

    def _send(self, link: FrontEndLink, *message: Any) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            write_message(link.writer, *message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = FrontEndLink(writer)
        self.links.add(link)
        self._send(link, *self.table())
        try:
            while True:
                kind, *args = await read_message(reader)
                if kind == "hello":
                    link.pid = args[0]
                elif kind == "ack":
                    link.acked = max(link.acked, args[0])
                    link.acks.set()
                elif kind == "call":
                    task = asyncio.create_task(self._call(link, *args))
                    self.calls.add(task)
                    task.add_done_callback(self.calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.links.discard(link)
            link.acks.set()
            writer.close()

    async def _call(self, link: FrontEndLink, call: int, name: str, argument: Any) -> None:
        """An administrator's call from a front end: answered once every front end follows its change."""
        assert self.watcher is not None
        try:
            if name == "reload":
                result: Any = await self.watcher.reload(explicit=bool(argument))
            elif name == "unload":
                result = await self.watcher.unload(str(argument))
            elif name == "load":
                assert self.keeper is not None
                result = await self.keeper.load(str(argument[0]), float(argument[1]))
            else:
                raise ValueError(f"unknown call {name!r}")
            self._send(link, "reply", call, True, result)
        except NoRoomError as exc:
            self._send(link, "reply", call, False, str(exc))
        except Exception as exc:  # the front end answers it as an error of its own
            logger.exception("control call %s failed", name)
            self._send(link, "reply", call, False, str(exc))
