"""CPU time of processes from /proc (Linux), split into each process's main thread and the rest.

A Python server's main thread runs its event loop (or, for the threaded server,
the loop that decides what the cache does not hold); its other threads are
gRPC's, the audit writer, the metrics listener. A process's children count as
its own (`lasthop serve --workers N` runs N of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    main: float = 0.0  # seconds on the main threads
    other: float = 0.0  # seconds on every other thread

    @property
    def total(self) -> float:
        return self.main + self.other

    def __sub__(self, earlier: Cpu) -> Cpu:
        return Cpu(self.main - earlier.main, self.other - earlier.other)


def _seconds(stat: Path) -> float:
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def family(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def cpu(pid: int) -> Cpu:
    """CPU used so far by `pid` and its descendants, by thread kind."""
    main = other = 0.0
    for process in family(pid):
        for task in Path(f"/proc/{process}").glob("task/*"):
            try:
                seconds = _seconds(task / "stat")
            except (OSError, IndexError, ValueError):
                continue  # the thread ended meanwhile
            if task.name == str(process):
                main += seconds
            else:
                other += seconds
    return Cpu(main, other)


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants."""
    total = 0.0
    for process in family(pid):
        for line in Path(f"/proc/{process}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total
