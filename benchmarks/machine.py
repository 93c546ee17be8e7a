"""What a figure was measured on, and how much CPU and memory a process used while it was measured.

Process figures come from ``/proc`` (Linux), so neither ``psutil`` nor any other extra package is needed:
``/proc/<pid>/stat`` for user and system CPU time, ``/proc/<pid>/status`` for resident memory.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository the benchmarks belong to (their commit is recorded with every result)."""

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.rstrip("\n")


def temporal_version(binary: Path) -> str | None:
    """First line of ``temporal --version``, e.g. ``temporal version 1.9.1 (Server 1.32.0, UI 2.54.1)``."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def machine_facts(temporal_binary: Path | None = None) -> dict[str, Any]:
    """CPU, memory, OS, Python and package versions, and the commit (with whether the tree has local changes).

    Args:
        temporal_binary: The ``temporal`` CLI whose ``--version`` names the dev server's version.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_bytes": _memory_total_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "temporalio": _version("temporalio"),
        "temporal_server": temporal_version(temporal_binary) if temporal_binary else None,
        "httpx": _version("httpx"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "tree_modified": sorted(line[3:] for line in status.splitlines()) if status else [],
        "command": _command(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _command() -> str:
    """This process's command line, ``python -m benchmarks …`` rather than the path of ``__main__.py``."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("benchmarks/__main__.py", "benchmarks\\__main__.py")):
        argv[0:1] = ["-m", "benchmarks"]
    return " ".join(["python", *argv])


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds and memory of one process at one moment."""

    at: float
    """``time.monotonic()`` when sampled."""
    cpu_s: float
    """User + system CPU seconds since the process started (all threads)."""
    rss_bytes: int | None
    """Resident set size now."""
    peak_rss_bytes: int | None
    """Highest resident set size so far (``VmHWM``)."""


def sample_process(pid: int | None = None) -> ProcessSample | None:
    """Sample a process (default: this one); ``None`` when it is gone or ``/proc`` is unreadable."""
    pid = os.getpid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
    fields = stat[stat.rfind(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    memory: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024
    return ProcessSample(
        at=time.monotonic(), cpu_s=cpu_s, rss_bytes=memory.get("VmRSS"), peak_rss_bytes=memory.get("VmHWM")
    )


def child_pids(name: str, parent: int | None = None) -> list[int]:
    """Pids of the direct children of ``parent`` (default: this process) whose command name is ``name``."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.find("(") + 1 : stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == parent and command == name:
            found.append(int(entry.name))
    return found


@dataclass
class CpuWindow:
    """CPU used by a set of processes between :meth:`start` and :meth:`stop`.

    Args:
        pids: Name → pid (``None``: this process).
    """

    pids: dict[str, int | None]

    def __post_init__(self) -> None:
        self._first: dict[str, ProcessSample | None] = {}
        self._wall0 = 0.0

    def start(self) -> None:
        """Take the first samples."""
        self._wall0 = time.monotonic()
        self._first = {name: sample_process(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, Any]:
        """Per process: CPU seconds used, share of one core over the window, RSS and peak RSS now."""
        wall = max(time.monotonic() - self._wall0, 1e-9)
        out: dict[str, Any] = {"wall_s": round(wall, 3)}
        for name, pid in self.pids.items():
            first, last = self._first.get(name), sample_process(pid)
            if first is None or last is None:
                out[name] = None
                continue
            cpu = last.cpu_s - first.cpu_s
            out[name] = {
                "cpu_s": round(cpu, 3),
                "cpu_core_share": round(cpu / wall, 4),
                "rss_bytes": last.rss_bytes,
                "peak_rss_bytes": last.peak_rss_bytes,
            }
        return out
