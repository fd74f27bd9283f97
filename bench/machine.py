"""The machine the benchmark runs on, and how busy other processes keep it.

On a 2-core machine shared with other work (a test suite, another benchmark) the figures are
worth little. Every measured section records how much CPU the rest of the machine used
meanwhile (system-wide busy time from ``/proc/stat`` minus the benchmark's own processes),
and the run waits for a quiet machine before it starts.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def describe() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def calibrate(runs: int = 7) -> float:
    """Milliseconds a fixed pure-Python loop takes (best of ``runs``): a speed index of the
    machine right now. Other processes, and neighbours on a shared host that ``/proc/stat``
    does not show, make it grow; compare runs by it."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i % 7
        best = min(best, time.perf_counter() - started)
    return best * 1000


def system_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def process_seconds(pid: int, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) a process has used, and with ``reaped_children`` those of
    its children that have exited; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class Meter:
    """CPU used by the machine, and by what ``own`` counts (default: this process), over an
    interval."""

    own: Callable[[], float] = own_seconds
    _busy: int = 0
    _own: float = 0.0
    _wall: float = 0.0

    def _own_now(self) -> float:
        return self.own()

    def start(self) -> Meter:
        self._busy, _ = system_ticks()
        self._own = self._own_now()
        self._wall = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        busy, _ = system_ticks()
        wall = time.perf_counter() - self._wall
        busy_cores = (busy - self._busy) / TICK / wall if wall else 0.0
        own_cores = (self._own_now() - self._own) / wall if wall else 0.0
        return {
            "wall_s": wall,
            "busy_cores": busy_cores,
            "own_cores": own_cores,
            "other_cores": max(0.0, busy_cores - own_cores),
        }


def wait_quiet(
    max_wait: float = 120.0, threshold: float = 0.15, window: float = 1.0
) -> dict[str, float]:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` of one core over
    ``window`` s; returns what was seen last and how long it took."""
    started = time.perf_counter()
    while True:
        meter = Meter().start()
        time.sleep(window)
        seen = meter.stop()
        waited = time.perf_counter() - started
        if seen["other_cores"] < threshold or waited >= max_wait:
            return {"other_cores": seen["other_cores"], "waited_s": waited}
