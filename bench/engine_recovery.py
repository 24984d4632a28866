"""How fast an engine comes back, and how long a request waits for a model loaded on demand.

    python bench/engine_recovery.py [--repeats 5] [--model shakespeare-gpt]

Two measurements on a `charlm serve` of the bundled models (docs/engines.md publishes them):
- restart: the model's engine process is killed (SIGKILL), --repeats times in a row; the time until
  /admin/models shows a new engine ready, and until a streamed request sent at the kill has its
  first character (each death after the first waits its backoff: 1, 2, 4 … s);
- on demand: with --max-loaded 1, the first character of a streamed request for a model on standby
  (its engine starts, evicting the idle one), against the same request once it is resident.
The on-demand and resident figures are repeated and the median printed with the range.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time

import httpx
from spawned import BENCH_ADMIN_KEY, spawned_server  # bench/, beside this script

ADMIN = {"Authorization": f"Bearer {BENCH_ADMIN_KEY}"}


def engine_pid(url: str, model: str) -> int | None:
    for described in httpx.get(f"{url}/admin/models", headers=ADMIN, timeout=30).json()["models"]:
        if described["name"] == model and described["status"] == "ready":
            return int(described["engine_pid"])
    return None


def first_char_s(url: str, model: str) -> float:
    """Seconds from sending a streamed request to its first character."""
    body = {"inputs": "ROMEO:", "model": model, "parameters": {"max_new_tokens": 8, "seed": 1}}
    started = time.monotonic()
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                assert "error" not in json.loads(line[5:]), line
                return time.monotonic() - started
    raise SystemExit(f"no character from {model}")


def restart_times(url: str, model: str) -> tuple[float, float]:
    """(seconds until a new engine is ready, seconds until a request sent at the kill has its first character)."""
    victim = engine_pid(url, model)
    assert victim is not None, f"{model} is not ready"
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    first = first_char_s(url, model)  # waits for the new engine
    while (pid := engine_pid(url, model)) is None or pid == victim:
        time.sleep(0.02)
    return time.monotonic() - killed, first


def summary(values: list[float]) -> str:
    low, middle, high = (round(value * 1000) for value in (min(values), statistics.median(values), max(values)))
    return f"median {middle} ms (range {low} to {high})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="shakespeare-gpt")
    args = parser.parse_args()
    with spawned_server("--models-poll-s", "0", "--engine-restarts", str(args.repeats * 2)) as url:
        times = [restart_times(url, args.model) for _ in range(args.repeats)]
        time.sleep(1)
        resident = [first_char_s(url, args.model) for _ in range(args.repeats)]
    for death, (ready_s, first_s) in enumerate(times, start=1):
        backoff = min(30.0, 2.0 ** (death - 2)) if death > 1 else 0.0  # service.control.keeper's
        print(f"restart {death} of {args.model} (backoff {backoff:g} s): engine ready {ready_s * 1000:.0f} ms after "
              f"the kill, first character of a request sent at the kill {first_s * 1000:.0f} ms")
    print(f"resident {args.model}: first character {summary(resident)}")
    with spawned_server("--models-poll-s", "0", "--max-loaded", "1", "--default-model", "shakespeare-lstm") as url:
        on_demand = []
        for _ in range(args.repeats):  # each request evicts the other model: both load on demand in turn
            on_demand.append(first_char_s(url, args.model))
            first_char_s(url, "shakespeare-lstm")
    print(f"on demand (--max-loaded 1) {args.model}: first character {summary(on_demand)}")


if __name__ == "__main__":
    main()
