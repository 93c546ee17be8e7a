"""What starting one backend command costs the worker, by event loop, worker heap size and way of spawning.

    python -m benchmarks.spawn_cost [--spawns 300] [--heaps 50,300]

For each event loop (asyncio, uvloop) × heap (MiB of touched memory held by the process, standing in for a big
worker) × spawner (``asyncio.create_subprocess_exec``, the loop's own; :func:`activities.backends.process.spawn.spawn`,
the connector's), a fresh Python process runs ``cat`` ``--spawns`` times, 10 at a time, each fed and drained through
its pipes, and reports wall time per spawn and its own user and system CPU per spawn (``getrusage``). Children's CPU
is not counted: what matters is what the worker's loop pays. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time

SPAWNERS = ("loop", "connector")
LOOPS = ("asyncio", "uvloop")


async def _measure(spawner: str, spawns: int) -> dict[str, float]:
    from activities.backends.process.spawn import spawn

    env = {"PATH": "/usr/bin:/bin"}

    async def one() -> None:
        if spawner == "loop":
            process = await asyncio.create_subprocess_exec(
                "cat",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            out, _ = await process.communicate(b"hi")
        else:
            child = await spawn(["cat"], env=env, cwd=None)
            assert child.stdin is not None and child.stdout is not None and child.stderr is not None
            child.stdin.write(b"hi")
            child.stdin.close()
            out = await child.stdout.read()
            await child.stderr.read()
            await child.wait()
        assert out == b"hi"

    for _ in range(20):  # warm up
        await one()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(0, spawns, 10):
        await asyncio.gather(*(one() for _ in range(10)))
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_ms": wall / spawns * 1000,
        "user_ms": (after.ru_utime - before.ru_utime) / spawns * 1000,
        "system_ms": (after.ru_stime - before.ru_stime) / spawns * 1000,
    }


def _child(loop: str, heap_mib: int, spawner: str, spawns: int) -> None:
    """Run one combination in this process and print its figures as JSON."""
    heap = [bytearray(1024 * 1024) for _ in range(heap_mib)]
    for block in heap:
        block[::4096] = b"x" * len(block[::4096])  # touch every page, as a live worker's heap is
    if loop == "uvloop":
        import uvloop

        figures = uvloop.run(_measure(spawner, spawns))
    else:
        figures = asyncio.run(_measure(spawner, spawns))
    print(json.dumps(figures))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run every combination in its own process and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spawn_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=300)
    parser.add_argument("--heaps", default="50,300", help="comma-separated heap sizes in MiB")
    parser.add_argument("--child", nargs=3, metavar=("LOOP", "HEAP", "SPAWNER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), args.child[2], args.spawns)
        return
    print("| loop | heap | spawner | wall / spawn | user CPU / spawn | system CPU / spawn |")
    print("|---|---:|---|---:|---:|---:|")
    for loop in LOOPS:
        for heap in (int(h) for h in args.heaps.split(",")):
            for spawner in SPAWNERS:
                command = [sys.executable, "-m", "benchmarks.spawn_cost", "--spawns", str(args.spawns)]
                output = subprocess.run(
                    [*command, "--child", loop, str(heap), spawner], check=True, capture_output=True, text=True
                ).stdout
                f = json.loads(output)
                name = "`create_subprocess_exec`" if spawner == "loop" else "`spawn()`"
                print(
                    f"| {loop} | {heap} MiB | {name} | {f['wall_ms']:.2f} ms | {f['user_ms']:.2f} ms "
                    f"| {f['system_ms']:.2f} ms |"
                )


if __name__ == "__main__":
    main()
