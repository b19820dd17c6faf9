"""How many CPUs this process may really use, for torch's thread count.

A container sees every core of its host in os.cpu_count(), and PyTorch sizes its thread pool from
the host too; on a 2-vCPU Space (a CPU quota) or under `taskset` (an affinity mask) that many threads
take turns on the few CPUs they get, and every parallel step waits for the slowest of them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")  # where a container sees its own cgroup


def cgroup_cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The cgroup's CPU limit in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None if unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # "max 100000" or "200000 100000"
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # -1: no limit
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max", or a file we do not understand: no limit we can honour
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may run on (its affinity mask), capped by its cgroup's quota; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    if quota is not None:  # 1.5 CPUs of quota: one busy thread, not two throttled ones
        count = min(count, math.floor(quota))
    return max(count, 1)
