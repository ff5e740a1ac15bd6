"""CPU seconds of process trees sampled from /proc while a benchmark runs: where a dashboard job's cores go."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _table() -> dict[int, tuple[int, float, str]]:
    """Every process now: pid -> (parent pid, CPU seconds, command line)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, command)
    return table


def _is_fork_server(pid: int, table: dict) -> bool:
    """multiprocessing's fork server. Its children are forks with its command line, so a process with that command
    line is a server unless its parent is one (a server's parent is whoever started it, never a server)."""
    return pid in table and "forkserver" in table[pid][2] and not _is_fork_server(table[pid][0], table)


def _depth_under(pid: int, root: int, table: dict) -> Optional[int]:
    """How many generations `pid` is below `root` (0: root itself; fork servers in between not counted), None if it
    is not a descendant."""
    depth = 0
    while pid in table:
        if pid == root:
            return depth
        parent = table[pid][0]
        depth += 0 if _is_fork_server(parent, table) else 1
        pid = parent
    return None


def tree_groups(root: int, names: tuple[str, ...]) -> Callable[[int, dict], Optional[str]]:
    """Name the processes under `root` by generation (`names[0]` for root, the last name for any deeper;
    multiprocessing's fork servers and trackers apart) and those of this benchmark's browser (Playwright's driver,
    Chromium's renderers, the rest of Chromium)."""
    me = os.getpid()

    def group(pid: int, table: dict) -> Optional[str]:
        command = table[pid][2]
        depth = _depth_under(pid, root, table)
        if depth is not None:
            if "resource_tracker" in command or _is_fork_server(pid, table):
                return "mp trackers"
            return names[min(depth, len(names) - 1)]
        if _depth_under(pid, me, table) in (None, 0):
            return None
        if "--type=renderer" in command:
            return "chromium renderers"
        if "chrom" in command:
            return "chromium other"
        return "playwright driver"

    return group


class Sampler:
    """Sample every named process every `interval` seconds on a thread; `cores()` gives each group's CPU seconds
    over the sampled span divided by its wall time (a process that started meanwhile counts from 0; one that
    ended counts up to its last sample, at most `interval` short)."""

    def __init__(self, group: Callable[[int, dict], Optional[str]], interval: float = 0.25):
        self._group, self._interval = group, interval
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._sample(first=True)
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(first=False)
        self._seconds = time.perf_counter() - self._start

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample(first=False)

    def _sample(self, *, first: bool) -> None:
        table = _table()
        for pid in table:
            name = self._group(pid, table)
            if name is None:
                continue
            if pid not in self._first:
                self._first[pid] = table[pid][1] if first else 0.0
            self._last[pid] = (name, table[pid][1])

    def cores(self) -> dict[str, float]:
        """CPU cores each group used on average over the sampled span, and their total."""
        used: dict[str, float] = defaultdict(float)
        for pid, (name, seconds) in self._last.items():
            used[name] += seconds - self._first[pid]
        result = {name: round(s / self._seconds, 3) for name, s in sorted(used.items())}
        result["total"] = round(sum(used.values()) / self._seconds, 3)
        return result
