"""Memory of a running `charlm serve`: RSS and PSS of every process of its tree, summed.

    python bench/memory.py [--workers 1 2] [--models-dir models] [--settle-s 5] [--torch-baseline]

For each --workers count it starts `charlm serve` on a free port (the bundled models unless told
otherwise), waits until /health answers and the engines have settled, reads /proc/PID/smaps_rollup
of the server's process tree (the server, its front ends, engines and multiprocessing helpers), prints
one row per process and the totals, and stops the server. PSS divides each shared page among the
processes that map it, so the PSS total is what the server costs the machine; RSS counts a shared
page once per process. --torch-baseline first measures a bare `python -c "import torch"` (the floor
of any process that imports torch). Reading another process's smaps needs the same user (or root).
"""

from __future__ import annotations

import argparse
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


def table(pids: list[int]) -> tuple[int, int]:
    """Print one row per process; the RSS and PSS totals in KiB."""
    print(f"{'pid':>8}  {'RSS MB':>8}  {'PSS MB':>8}  process")
    rss = pss = 0
    for pid in sorted(pids):
        fields = rollup_kib(pid)
        if not fields:
            continue
        rss, pss = rss + fields["Rss"], pss + fields["Pss"]
        print(f"{pid:>8}  {fields['Rss'] / 1024:8.0f}  {fields['Pss'] / 1024:8.0f}  {title(pid)}")
    print(f"{'total':>8}  {rss / 1024:8.0f}  {pss / 1024:8.0f}  {len(pids)} processes")
    return rss, pss


def torch_baseline() -> None:
    """A process that has imported torch and nothing else."""
    with subprocess.Popen([sys.executable, "-c", "import sys, torch; sys.stdout.write('ok\\n'); sys.stdout.flush(); "
                           "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        child.stdout.readline()
        print("python -c 'import torch':")
        table([child.pid])
        child.stdin.close()


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
    parser.add_argument("--torch-baseline", action="store_true", help="measure `import torch` alone first")
    args = parser.parse_args()
    if args.torch_baseline:
        torch_baseline()
    for workers in args.workers:
        measure(workers, args.models_dir, args.settle_s)


if __name__ == "__main__":
    main()
