"""The page's server process around the model: the switch to the C++ decode step once it is built,
and the process's resident memory for the start-up line."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from tinygpt.model.gpt import GPT
from tinygpt.serving.backends import CppBackend, extension
from tinygpt.serving.engine import Engine


def resident_memory_mb() -> float:
    """This process's resident memory (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def switch_to_cpp(engine: Engine, model: GPT, threads: int) -> None:
    """Build the C++ decode step (or find it built) and decode with it, on `threads` threads, from then
    on; log either way."""
    started = time.perf_counter()
    print("building the C++ decode step in the background ...", flush=True)
    with contextlib.suppress(AttributeError, OSError):  # Linux: this thread and the compiler it starts
        os.setpriority(os.PRIO_PROCESS, 0, 10)  # yield the CPU to the page while they work
    if extension() is None:  # it printed why
        print("staying on PyTorch float32", flush=True)
        return
    backend = CppBackend(model, threads)
    engine.use(backend)
    ready_s = time.perf_counter() - started
    print(f"switched to the C++ decode step ({backend.threads} threads; ready after {ready_s:.1f} s)", flush=True)


_IMPORTED = time.perf_counter()


def seconds_since_start() -> float:
    """Seconds since this process started (Linux: its start time in /proc; elsewhere: since this
    module was imported), for the cold start in the start-up line (benchmarks/cold_start.py times it
    from outside)."""
    try:
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED
