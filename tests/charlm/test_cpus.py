"""`available_cpus`: the CPU quota of the process's cgroups (v2 and v1) and its affinity, the smallest,
rounded up, at least 1; read from real files laid out as /proc/self/cgroup and /sys/fs/cgroup are."""

from __future__ import annotations

import os
from pathlib import Path

from charlm.cpus import available_cpus, cgroup_cpu_quota

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path: Path, limits: dict[str, str], own: str = "/app.slice/charlm") -> tuple[Path, Path]:
    """A v2 hierarchy: `limits` maps a cgroup path to its cpu.max; the process is in `own`."""
    root = tmp_path / "cgroup"
    (root / own.strip("/")).mkdir(parents=True)
    for path, cpu_max in limits.items():
        (root / path.strip("/") / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc, root


def test_a_v2_quota_is_quota_over_period(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(*cgroup_v2(tmp_path, {"/app.slice/charlm": "150000 100000"})) == 1.5


def test_a_fractional_quota_rounds_up_and_affinity_caps_it(tmp_path: Path) -> None:
    proc, root = cgroup_v2(tmp_path, {"/app.slice/charlm": "50000 100000"})
    assert available_cpus(proc, root) == 1  # half a CPU is one thread's worth
    (root / "app.slice/charlm/cpu.max").write_text("150000 100000\n")
    assert available_cpus(proc, root) == min(2, AFFINITY)
    (root / "app.slice/charlm/cpu.max").write_text(f"{(AFFINITY + 8) * 100000} 100000\n")
    assert available_cpus(proc, root) == AFFINITY  # a quota above the CPUs we may run on changes nothing


def test_max_means_no_quota_and_the_affinity_counts(tmp_path: Path) -> None:
    proc, root = cgroup_v2(tmp_path, {"/app.slice/charlm": "max 100000"})
    assert cgroup_cpu_quota(proc, root) is None
    assert available_cpus(proc, root) == AFFINITY


def test_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    proc, root = cgroup_v2(tmp_path, {"/app.slice": "100000 100000", "/app.slice/charlm": "max 100000"})
    assert cgroup_cpu_quota(proc, root) == 1.0


def test_a_container_sees_its_own_cgroup_as_the_root(tmp_path: Path) -> None:
    """/proc/self/cgroup names the host's path, which the container's mount does not have."""
    proc, root = cgroup_v2(tmp_path, {"/": "200000 100000"}, own="/")
    proc.write_text("0::/kubepods/pod1234/container\n")
    assert cgroup_cpu_quota(proc, root) == 2.0


def test_a_v1_cfs_quota_counts_and_minus_one_is_none(tmp_path: Path) -> None:
    cpu = tmp_path / "cgroup" / "cpu,cpuacct"
    (cpu / "docker" / "abc").mkdir(parents=True)
    for directory, quota in ((cpu, "-1"), (cpu / "docker", "-1"), (cpu / "docker" / "abc", "250000")):
        (directory / "cpu.cfs_quota_us").write_text(quota + "\n")
        (directory / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("5:cpuacct,cpu:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(proc, tmp_path / "cgroup") == 2.5
    (cpu / "docker" / "abc" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(proc, tmp_path / "cgroup") is None


def test_no_cgroup_files_means_the_affinity(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "missing", tmp_path) == AFFINITY
    assert available_cpus() >= 1  # this machine's own, whatever it is
