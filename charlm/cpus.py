"""How many CPUs this process may use: the defaults for torch threads and HTTP front ends.

`os.cpu_count()` counts the machine's cores, not this process's share of them. A container limited
to 2 CPUs on a 64-core host would start 8 front ends and 63 torch threads per model, and every
thread beyond the quota only waits for its turn (OpenMP teams that outnumber the CPUs stop
spinning, and each small operator then waits on a wake-up). The share is the smallest of:

- the CPUs the process may run on (`os.sched_getaffinity`: `taskset`, `docker --cpuset-cpus`);
- the CPU bandwidth quota of its cgroup (`docker --cpus`, a Kubernetes CPU limit): cgroup v2's
  `cpu.max` ("quota period", or "max" for none), or cgroup v1's `cpu.cfs_quota_us` over
  `cpu.cfs_period_us` (-1 for none), rounded up: 1.5 CPUs may keep two threads busy half the time.
  Every cgroup from the process's own up to the root may set one; the smallest counts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may keep busy, at least 1 (the paths are parameters for tests)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota, in CPUs, over this process's cgroup and its ancestors; None if none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:  # not Linux, or no /proc
        return None
    quotas = []
    for line in lines:  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            quotas += [v2_quota(d) for d in ancestors(cgroup_root, path)]
        elif "cpu" in controllers.split(","):
            mount = next((cgroup_root / name for name in (controllers, "cpu", "cpu,cpuacct")
                          if (cgroup_root / name / "cpu.cfs_quota_us").exists()), None)
            if mount is not None:
                quotas += [v1_quota(d) for d in ancestors(mount, path)]
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under `mount` and each one above it up to the mount. In a container,
    `path` may name the cgroup as the host sees it while the container's own is mounted as the
    root: then the path is not there, and the mount is the process's own cgroup."""
    directory = mount / path.strip("/")
    if not directory.is_dir():
        return [mount]
    found = [directory]
    while directory != mount:
        directory = directory.parent
        found.append(directory)
    return found


def v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
