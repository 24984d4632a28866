"""Room under CHARLM_MAX_LOADED: which engines are idle, and which one makes room for another model.

An engine is idle when its pulse (`Engine.pulse`, at most half a second old from an engine process)
says it has held no sequence for a while. A just-started engine is never taken: the request that
started it has not reached it yet. The least recently used idle engine goes first; an engine with
sequences never does (what reaches it after the look still finishes: it retires, it is not killed).
"""

from __future__ import annotations

import time

from service.control.model_entry import ModelEntry
from service.control.registry import Registry

MIN_IDLE_S = 1.0  # an engine idle for less may be about to take a request that a front end holds
FRESH_S = 2.0  # an engine started this recently waits for the request that started it (milliseconds away)


class NoRoomError(Exception):
    """Every loaded engine is busy: none can make room for another model."""


def idle_engines(registry: Registry, seconds: float, keep_default: bool) -> list[ModelEntry]:
    """Ready models whose engine has held no sequence for `seconds` (and MIN_IDLE_S), longest idle
    first; the default model only when `keep_default` is off (under CHARLM_MAX_LOADED it takes its
    turn, or a cap of 1 would serve nothing else; an idle timeout never unloads it)."""
    idle = []
    now = time.time()
    for entry in registry.entries.values():
        if entry.status != "ready" or entry.engine is None or now - entry.loaded_at < FRESH_S:
            continue
        if keep_default and entry.name == registry.configured_default:
            continue
        _, idle_s, load = entry.engine.pulse()
        if load == 0 and idle_s >= max(seconds, MIN_IDLE_S):
            idle.append((idle_s, entry))
    return [entry for _, entry in sorted(idle, key=lambda pair: -pair[0])]


def make_room(registry: Registry) -> ModelEntry | None:
    """The engine to unload so that one more fits under CHARLM_MAX_LOADED (None: there is room).
    Raises NoRoomError when every engine is busy."""
    cap = registry.config.settings.max_loaded
    if not cap or registry.engines_held() < cap:
        return None
    idle = idle_engines(registry, 0.0, keep_default=False)
    if not idle:
        raise NoRoomError(f"all {cap} loaded models are busy (CHARLM_MAX_LOADED={cap}); none can be unloaded "
                          "to make room")
    return idle[0]
