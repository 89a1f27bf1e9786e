"""Peak RSS and CPU time of every process of the stack, over one benchmark.

The peak is the kernel's high-water mark (``VmHWM``), reset at the start of each benchmark by
writing 5 to ``/proc/<pid>/clear_refs``; a 100 ms psutil sampler backs it up where the reset is
not allowed. CPU seconds per process, and the machine's CPU used by processes outside the stack
(the machine is shared and noisy), tell what bounds a figure.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024


@dataclass
class ProcessUsage:
    name: str
    pid: int
    rss_start: int
    rss_peak: int
    rss_end: int
    cpu_seconds: float
    hwm_reset: bool


@dataclass
class Usage:
    """What every watched process used during one benchmark, and the machine around it."""

    wall_seconds: float
    processes: list[ProcessUsage]
    machine_busy_seconds: float
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def own_cpu_seconds(self) -> float:
        return sum(p.cpu_seconds for p in self.processes)

    @property
    def foreign_cpu_seconds(self) -> float:
        """CPU the machine spent outside the stack meanwhile (other users of a shared host)."""
        return max(self.machine_busy_seconds - self.own_cpu_seconds, 0.0)

    def peak(self, name: str) -> int:
        return max((p.rss_peak for p in self.processes if p.name == name), default=0)


def _hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _busy(times: Any) -> float:
    return float(times.user + times.system + getattr(times, "nice", 0.0))


class Monitor:
    """Watches named processes (and their descendants) while a ``with`` block runs."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.interval = interval
        self._named = pids
        self._procs: dict[str, psutil.Process] = {}
        self._rss_start: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._cpu_start: dict[str, float] = {}
        self._reset: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.usage: Usage | None = None

    def _discover(self) -> dict[str, psutil.Process]:
        found: dict[str, psutil.Process] = {}
        named = set(self._named.values())
        for name, pid in self._named.items():
            try:
                process = psutil.Process(pid)
                found[name] = process
                for child in process.children(recursive=True):
                    if child.pid not in named:  # e.g. a process a dev server forks
                        found[f"{name}/{child.name()}[{child.pid}]"] = child
            except psutil.Error:
                continue
        return found

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name, process in list(self._procs.items()):
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self._peak[name] = max(self._peak.get(name, 0), rss)

    def __enter__(self) -> Monitor:
        self._procs = self._discover()
        for name, process in self._procs.items():
            try:
                self._reset[name] = _reset_hwm(process.pid)
                rss = process.memory_info().rss
                self._rss_start[name] = self._peak[name] = rss
                self._cpu_start[name] = self._cpu(process)
            except psutil.Error:
                continue
        self._load_start = os.getloadavg()
        self._machine_start = _busy(psutil.cpu_times())
        self._wall_start = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, name="bench-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall = time.perf_counter() - self._wall_start
        machine = _busy(psutil.cpu_times()) - self._machine_start
        rows = []
        for name, process in self._procs.items():
            try:
                rss_end = process.memory_info().rss
                cpu = self._cpu(process) - self._cpu_start.get(name, 0.0)
            except psutil.Error:
                rss_end, cpu = 0, 0.0
            peak = max(self._peak.get(name, 0), rss_end)
            hwm = _hwm(process.pid) if self._reset.get(name) else None
            if hwm is not None:
                peak = max(peak, hwm)
            rows.append(
                ProcessUsage(
                    name=name,
                    pid=process.pid,
                    rss_start=self._rss_start.get(name, 0),
                    rss_peak=peak,
                    rss_end=rss_end,
                    cpu_seconds=cpu,
                    hwm_reset=self._reset.get(name, False),
                )
            )
        self.usage = Usage(
            wall_seconds=wall,
            processes=rows,
            machine_busy_seconds=machine,
            load_start=self._load_start,
            load_end=os.getloadavg(),
        )
