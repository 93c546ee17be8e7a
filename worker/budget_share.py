"""One request budget for the worker processes of a host: they share its client IP, which the platform limits.

A platform counts requests per client IP (docs/protocol.md §2), so two workers on one host that each plan for the
full ``--request-budget`` together send twice what the IP may. Workers that use the same directory (by default
``<state dir>/budget-share``, so the workers of one user on one host; point ``MOLECULE_CONNECT_STATE_DIR`` at a
shared directory to include more) split it instead. Each keeps two files there:

- ``<id>.lock``, held with an exclusive ``flock`` for the life of the process. The kernel releases it when the
  process ends, however it ends (even ``kill -9``), so a peer is alive exactly while its lock is held, with no
  timeouts and no stale state; the first worker to find a lock free removes that peer's files;
- ``<id>.json``, what it plans with, per platform origin: its configured budget and how many workspaces it serves
  there, replaced atomically (write, then rename) every :data:`REFRESH_S`.

Every :data:`REFRESH_S` each worker reads its live peers' files and takes, per platform, the share
``(1 + n_self) / Σ (1 + n_i)`` of the smallest budget any of them configured, ``n`` being the workspaces each
serves there: the split follows the workspaces, as if one worker served them all, and an idle worker keeps a small
share for its first register. A worker reads its peers before its first request, so a new one starts at its share;
the others adjust within :data:`REFRESH_S`, during which the host may send up to that much more than the budget
(the default budget leaves the platform 20 % of headroom).

``flock`` is local to a host: on a network file system, or across hosts, it proves nothing, and workers there
must split the budget by hand (``--request-budget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from activities.budget import RequestBudget
from activities.planner import RequestBudgets

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, so no sharing
    fcntl = None  # type: ignore[assignment]

REFRESH_S = 5.0
"""How often a worker publishes its demand and re-reads its peers'."""
SHARE_DIR = "budget-share"
"""The directory under the state directory that the workers of a host share."""

logger = logging.getLogger(__name__)


class BudgetShareError(OSError):
    """The share directory cannot be used; the worker then runs on its whole budget (and says so)."""


@dataclass(frozen=True)
class Peer:
    """Another live worker process sharing the directory."""

    id: str
    platforms: dict[str, dict[str, float]]
    """Platform origin → ``{"per_minute", "workspaces"}``."""


def _lock(fd: int, *, blocking: bool = False) -> bool:
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


class HostBudgetShare:
    """This process's membership of a host's shared request budget (see the module docstring).

    Use: :meth:`start` before the worker sends anything, then run :meth:`run` as a task; :meth:`close` at exit.

    Args:
        budgets: This process's budgets: their per-platform share is set here, their planners give the workspaces.
        directory: The directory the host's workers share (created, mode 0700).
        refresh_s: Seconds between refreshes.
        announce: Where one-line news about the split go (default: this module's logger at INFO).
    """

    def __init__(
        self,
        budgets: RequestBudgets,
        directory: Path,
        *,
        refresh_s: float = REFRESH_S,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._budgets = budgets
        self._refresh_s = refresh_s
        self._announce = announce or logger.info
        self._lock_fd: int | None = None
        self._peers: list[Peer] = []
        self._told: dict[str, tuple[int, float]] = {}

    @property
    def peers(self) -> list[Peer]:
        """The live peers found by the last refresh."""
        return list(self._peers)

    def start(self) -> None:
        """Take this process's lock, publish, read the peers and set the shares.

        Raises:
            BudgetShareError: No ``flock`` here (Windows), or the directory or its files cannot be written.
        """
        if fcntl is None:
            raise BudgetShareError("file locks (fcntl) are not available on this system")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Locked under a temporary name, then renamed: a peer never sees this lock file unlocked.
            tmp = self.directory / f".{self.id}.lock.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
            _lock(fd, blocking=True)
            os.replace(tmp, self._path("lock"))
            self._lock_fd = fd
            self._peers = self._exchange(self._demand())
        except OSError as err:
            self.close()
            raise BudgetShareError(f"cannot share the request budget through {self.directory}: {err}") from None
        self._apply()
        self._budgets.on_new_platform = self._on_new_platform

    def refresh(self) -> None:
        """Publish, re-read the peers and set the shares now (blocking file I/O; :meth:`run` does it off the loop)."""
        self._peers = self._exchange(self._demand())
        self._apply()

    async def run(self) -> None:
        """Refresh every ``refresh_s`` until cancelled; a failing refresh is logged and retried at the next."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._peers = await asyncio.to_thread(self._exchange, self._demand())
            except OSError as err:
                logger.warning("request budget share: refresh failed: %s", err)
                continue
            self._apply()

    def close(self) -> None:
        """Leave the share: remove this process's files and release its lock."""
        self._budgets.on_new_platform = None
        for suffix in ("json", "lock"):
            with contextlib.suppress(OSError):
                self._path(suffix).unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _path(self, suffix: str, worker_id: str | None = None) -> Path:
        return self.directory / f"{worker_id or self.id}.{suffix}"

    def _demand(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "platforms": {
                origin: {"per_minute": budget.per_minute, "workspaces": planner.workspaces}
                for origin, (budget, planner) in self._budgets.platforms().items()
                if not budget.unlimited
            },
        }

    def _exchange(self, demand: dict[str, Any]) -> list[Peer]:
        """Publish ``demand``; return the live peers, removing the files of dead ones (runs in a thread)."""
        _write_atomically(self._path("json"), orjson.dumps(demand))
        peers = []
        for lock_path in self.directory.glob("*.lock"):
            worker_id = lock_path.name.removesuffix(".lock")
            if worker_id == self.id:
                continue
            try:
                fd = os.open(lock_path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                if _lock(fd):  # nobody holds it: that worker is gone
                    for suffix in ("json", "lock"):
                        with contextlib.suppress(FileNotFoundError):
                            self._path(suffix, worker_id).unlink()
                    continue
            finally:
                os.close(fd)
            try:
                data = orjson.loads(self._path("json", worker_id).read_bytes())
                platforms = {str(k): dict(v) for k, v in data.get("platforms", {}).items()}
            except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                platforms = {}  # alive, but not published yet (or mid-write): it counts from the next refresh
            peers.append(Peer(worker_id, platforms))
        return peers

    def share_of(self, origin: str, budget: RequestBudget, workspaces: int) -> tuple[float, int]:
        """This process's share of ``origin``'s budget with the current peers, and how many peers use it."""
        claims = [p.platforms[origin] for p in self._peers if origin in p.platforms]
        claims = [c for c in claims if float(c.get("per_minute", 0)) > 0]
        host_budget = min([budget.per_minute, *(float(c["per_minute"]) for c in claims)])
        weight = 1.0 + workspaces
        total = weight + sum(1.0 + max(float(c.get("workspaces", 0)), 0.0) for c in claims)
        return host_budget / budget.per_minute * weight / total, len(claims)

    def _apply(self) -> None:
        for origin, (budget, planner) in self._budgets.platforms().items():
            if not budget.unlimited:
                self._set(origin, budget, planner.workspaces)

    def _on_new_platform(self, origin: str, budget: RequestBudget) -> None:
        if not budget.unlimited:
            self._set(origin, budget, 0)

    def _set(self, origin: str, budget: RequestBudget, workspaces: int) -> None:
        share, peers = self.share_of(origin, budget, workspaces)
        budget.set_share(share)
        told = self._told.get(origin)
        if told is None or told[0] != peers or abs(told[1] - share) > 0.2 * max(told[1], 0.01):
            self._told[origin] = (peers, share)
            if peers:
                self._announce(
                    f"request budget for {origin} shared with {peers} other worker(s) on this host: "
                    f"{budget.per_minute * share:.0f}/min here"
                )
            elif told is not None:
                self._announce(f"request budget for {origin}: {budget.per_minute:.0f}/min here, no other worker")
