"""Training jobs beside a control plane: the scheduler started when training is on, publishing into
the models directory that the control plane serves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from service.jobs.executors import Executor, LocalExecutor
from service.jobs.scheduler import Scheduler
from service.jobs.store import Store

logger = logging.getLogger(__name__)
RELOAD_TIMEOUT_S = 300.0  # a new model loads (on a GPU: compiles, captures) before its job succeeds


def make_executor(name: str) -> Executor:
    """CHARLM_TRAIN_EXECUTOR's executor: `local`, or `ray` (its settings from CHARLM_RAY_*)."""
    if name == "ray":
        from service.jobs.ray_executor import RayExecutor  # Ray is an extra

        return RayExecutor.from_environment()
    return LocalExecutor()


def start_scheduler(settings: Any, loop: asyncio.AbstractEventLoop,
                    reload: Callable[[], Coroutine[Any, Any, Any]]) -> Scheduler | None:
    """The data directory's job scheduler, when training is on. `reload` (a coroutine on `loop`) makes
    the control plane serve the models directory as it is: a job succeeds once its model is served."""
    if not settings.training:
        return None

    def published(name: str) -> None:
        asyncio.run_coroutine_threadsafe(reload(), loop).result(RELOAD_TIMEOUT_S)
        logger.info("training job's model %s is served", name)

    scheduler = Scheduler(Store(settings.data_dir), settings, make_executor(settings.train_executor), published)
    scheduler.start()
    return scheduler
