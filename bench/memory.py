"""Memory of a running `charlm serve`: RSS and PSS of every process of its tree, summed.

    python bench/memory.py [--workers 1 2] [--models-dir models] [--settle-s 5] [--baselines]

For each --workers count it starts `charlm serve` on a free port (the bundled models unless told
otherwise), waits until /health answers and the engines have settled, reads /proc/PID/smaps_rollup
of the server's process tree (the server, its front ends, engines and multiprocessing helpers), prints
one row per process and the totals, and stops the server. PSS divides each shared page among the
processes that map it, so the PSS total is what the server costs the machine; RSS counts a shared
page once per process; USS (private) is what the process alone holds, freed were it to exit.
--baselines first measures a bare `python -c "import torch"` (the floor of any process that imports
torch), one that imports the engine's modules (what a 'spawn'ed engine held before its model), and a
child of the fork server (`service.engine.forkserver`) before it does anything. Reading another
process's smaps needs the same user (or root).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from spawned import descendants, spawned_process  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]


def rollup_kib(pid: int) -> dict[str, int]:
    """Rss, Pss, and the rest of /proc/PID/smaps_rollup, in KiB; empty once the process has gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = {}
    for line in lines[1:]:  # the first line names the address range
        key, value, *_ = line.split()
        fields[key.rstrip(":")] = int(value)
    return fields


def title(pid: int) -> str:
    """What `ps` shows for the process: its command line (or process title), shortened."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return "(gone)"
    words = [word.decode(errors="replace") for word in argv if word]
    if len(words) > 1 and Path(words[0]).name.startswith("python"):
        words = words[1:]
    return " ".join(words)[:64]


def table(pids: list[int]) -> None:
    """Print one row per process (RSS, PSS and USS: private memory) and the totals."""
    print(f"{'pid':>8}  {'RSS MB':>8}  {'PSS MB':>8}  {'USS MB':>8}  process")
    totals = [0, 0, 0]
    for pid in sorted(pids):
        fields = rollup_kib(pid)
        if not fields:
            continue
        row = [fields["Rss"], fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(f"{pid:>8}  " + "  ".join(f"{kib / 1024:8.0f}" for kib in row) + f"  {title(pid)}")
    print(f"{'total':>8}  " + "  ".join(f"{kib / 1024:8.0f}" for kib in totals) + f"  {len(pids)} processes")


def imported(module: str) -> None:
    """A fresh interpreter that has imported `module` and nothing else (as 'spawn' starts one)."""
    code = f"import sys, {module}; sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}) as child:
        assert child.stdout is not None and child.stdin is not None
        child.stdout.readline()
        print(f"\npython -c 'import {module}':")
        table([child.pid])
        child.stdin.close()


def forked_child() -> None:
    """A child of the fork server before it does anything (an engine before its model), and the server."""
    sys.path.insert(0, str(ROOT))
    from service.engine.forkserver import child_context

    child = child_context().Process(target=time.sleep, args=(600,), daemon=True)
    child.start()
    time.sleep(2)
    print("\na child of the fork server, before any model (and the fork server):")
    table(descendants(os.getpid())[1:])
    child.kill()
    child.join()


def baselines() -> None:
    imported("torch")
    imported("service.engine.process")  # what a spawned engine imported before its model
    forked_child()


def measure(workers: int, models_dir: str, settle_s: float) -> None:
    flags = ["--workers", str(workers), "--models-dir", models_dir, "--models-poll-s", "0"]
    with spawned_process(*flags) as (_, process):
        time.sleep(settle_s)  # front ends answer /health before all of them have started
        print(f"\ncharlm serve --workers {workers} --models-dir {models_dir}:")
        table(descendants(process.pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="front ends per run (1 2)")
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help="the bundled models")
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after /health answers (5 s)")
    parser.add_argument("--baselines", action="store_true",
                        help="first measure `import torch` alone, the engine's imports, a fork server's child")
    args = parser.parse_args()
    if args.baselines:
        baselines()
    for workers in args.workers:
        measure(workers, args.models_dir, args.settle_s)


if __name__ == "__main__":
    main()
