"""A front end that follows a supervisor's control plane (`service.control.server`) over its socket.

The supervisor sends the table of served models after every change; this front end connects to the
engines it names, then says it follows it. Administrators' calls made to this front end are
answered by the supervisor. If the supervisor goes away, the front end drains and exits: it cannot
follow the models any more.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from service.control.live_models import ReloadReport
from service.control.server import read_message, write_message
from service.control.views import ModelView, ServerFacts
from service.engine.wire import convert
from service.frontend.metrics import ServiceMetrics
from service.frontend.models import FrontModels, ModelUnavailableError

logger = logging.getLogger(__name__)


class RemoteModels(FrontModels):
    def __init__(self, metrics: ServiceMetrics, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(metrics)
        self.reader, self.writer = reader, writer
        self.calls: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self.numbers = itertools.count()
        self.listening: asyncio.Task[None] | None = None
        self.on_drain: Callable[[], None] = lambda: None  # set by the front end's server
        self.stopped = False

    @classmethod
    async def connect(cls, address: str, metrics: ServiceMetrics) -> RemoteModels:
        """Follow the control plane at `address`: returns once the first table is followed."""
        reader, writer = await asyncio.open_unix_connection(address)
        models = cls(metrics, reader, writer)
        write_message(writer, "hello", os.getpid())
        kind, *table = await read_message(reader)
        assert kind == "table"
        await models._follow_table(*table)
        models.listening = asyncio.create_task(models._listen())
        return models

    async def _follow_table(self, generation: int, views: Any, default_model: str, facts: Any,
                            reloads: dict[str, int], failures: dict[str, int]) -> None:
        self.facts = convert(facts, ServerFacts)
        self.reloads, self.load_failures = reloads, failures
        await self.follow(convert(views, dict[str, ModelView]), default_model)
        write_message(self.writer, "ack", generation)

    async def _listen(self) -> None:
        try:
            while True:
                kind, *args = await read_message(self.reader)
                if kind == "table":
                    await self._follow_table(*args)
                elif kind == "reply":
                    call, ok, result = args
                    if (answer := self.calls.pop(call, None)) is not None and not answer.done():
                        answer.set_result((ok, result))
                elif kind == "drain":
                    self.on_drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if not self.stopped:
                logger.error("the supervisor is gone: this front end drains and exits")
                self.on_drain()
        finally:
            for answer in self.calls.values():
                if not answer.done():
                    answer.set_result((False, "the supervisor is gone"))

    async def _call(self, name: str, argument: Any) -> Any:
        number = next(self.numbers)
        answer = self.calls[number] = asyncio.get_running_loop().create_future()
        write_message(self.writer, "call", number, name, argument)
        ok, result = await answer
        if not ok:
            raise RuntimeError(result)
        return result

    async def reload(self, explicit: bool = True) -> ReloadReport:
        report: ReloadReport = convert(await self._call("reload", explicit), ReloadReport)
        return report

    async def unload(self, name: str) -> bool:
        return bool(await self._call("unload", name))

    async def load(self, name: str, room_wait_s: float) -> str:
        try:
            return str(await self._call("load", [name, room_wait_s]))
        except RuntimeError as exc:  # no room for it (CHARLM_MAX_LOADED), or the supervisor is gone
            raise ModelUnavailableError(name, "standby", str(exc)) from None

    async def stop(self) -> None:
        self.stopped = True
        if self.listening is not None:
            self.listening.cancel()
        self.writer.close()
