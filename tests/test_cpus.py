"""The thread count comes from the CPUs the process may use: its affinity mask and its cgroup's quota."""

import os

import pytest

from tinygpt.serving.cpus import cgroup_cpu_quota, usable_cpus


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 1), ("50000 100000\n", 1), ("max 100000\n", 8), ("1600000 100000", 8)],
)
def test_cgroup_v2_quota_caps_the_affinity_mask(tmp_path, eight_cpus, cpu_max, expected):
    write(tmp_path / "cpu.max", cpu_max)
    assert usable_cpus(tmp_path) == expected


@pytest.mark.parametrize(("quota", "expected"), [("300000", 3), ("-1", 8), ("25000", 1)])
def test_cgroup_v1_quota_is_the_fallback(tmp_path, eight_cpus, quota, expected):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", f"{quota}\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert usable_cpus(tmp_path) == expected


def test_without_a_cgroup_the_affinity_mask_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == 3


def test_an_unreadable_quota_is_no_limit(tmp_path, eight_cpus):
    write(tmp_path / "cpu.max", "garbage\n")
    assert usable_cpus(tmp_path) == 8
    write(tmp_path / "cpu.max", "100000 0\n")
    assert usable_cpus(tmp_path) == 8
