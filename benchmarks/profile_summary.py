"""Summarize a py-spy raw profile: busy samples by frame, self and inclusive, idle waits left out.

py-spy samples every thread of the benchmark process (the event loop, the workflow task threads, the SDK's
threads), which pyinstrument, following one thread, cannot. Record a scenario, then summarize::

    py-spy record -r 100 -f raw -o throughput.raw -- python -m benchmarks throughput --impl temporal --runs 1
    python -m benchmarks.profile_summary throughput.raw --top 40

A sample is idle, and skipped, when its innermost frame is a thread waiting for work (``selectors``, the thread
pool's queue, ``waitpid``).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

IDLE_FRAMES = ("EpollSelector.select", "_worker (concurrent/futures/thread.py", "_do_waitpid")


def summarize_raw(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """``(busy samples, self counts, inclusive counts)`` of a py-spy ``--format raw`` file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames or not count.isdigit() or any(marker in frames[-1] for marker in IDLE_FRAMES):
            continue
        samples = int(count)
        busy += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return busy, own, inclusive


def main(argv: list[str] | None = None) -> None:
    """Print the top frames by self and by inclusive busy samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--top", type=int, default=30, help="frames per table (default 30)")
    parser.add_argument("--min-percent", type=float, default=2.0, help="inclusive frames under this are left out")
    args = parser.parse_args(argv)
    busy, own, inclusive = summarize_raw(args.raw)
    print(f"busy samples: {busy}")
    print("\nself")
    for frame, count in own.most_common(args.top):
        print(f"{count * 100 / busy:6.1f}%  {frame}")
    print("\ninclusive")
    shown = 0
    for frame, count in inclusive.most_common():
        if count * 100 / busy < args.min_percent or shown >= args.top:
            break
        if "runpy" in frame or "asyncio/runners.py" in frame:
            continue
        print(f"{count * 100 / busy:6.1f}%  {frame}")
        shown += 1


if __name__ == "__main__":
    main()
