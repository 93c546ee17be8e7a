"""``python -m benchmarks <scenario> [options] [--out DIR]``: run one scenario (or ``all``) and write its report.

Each scenario starts its own Temporal dev server, devplatform process and in-process worker, prints its figures
table and writes ``<out>/<scenario>.json`` and ``<out>/<scenario>.md``. ``all`` runs the five scenarios in turn
(each in its own process; the baseline runs inside ``latency``, ``throughput`` and ``sporadic``, the last one at its
``--quick`` size) and also writes ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks import failover, fleet, idle, latency, sporadic, throughput
from benchmarks.report import Result, figures_table, load, machine_line, write
from worker import loop as event_loop

DEFAULT_OUT = Path(__file__).resolve().parent / "out"

SMOKE: dict[str, Any] = {
    "latency": latency.LatencyParams(messages=5, warmup=1, poll_interval_s=0.2, fast_poll_interval_s=None),
    "throughput": throughput.ThroughputParams(
        workspaces=2, messages=5, conversations=2, runs=1, warmup=1, poll_interval_s=0.2
    ),
    "idle": idle.IdleParams(workspaces=2, minutes=10 / 60, heartbeat_interval_s=4.0, settle_s=1.0, calibration_s=10.0),
    "fleet": fleet.FleetParams(
        workspaces=5, poll_interval_s=0.5, settle_s=1.0, hold_s=5.0, probes=1, status_every_s=2.0
    ),
    "failover": failover.FailoverParams(
        workspaces=3, failover_timeouts=(None,), heartbeat_interval_s=4.0, settle_s=1.0, window_s=3.0, observe_s=8.0
    ),
    "sporadic": sporadic.SporadicParams(messages=2, min_silence_s=0.2, max_silence_s=1.0, burst=3, replicas=1),
}
"""Tiny sizes: a check that every scenario runs end to end (CI smoke test, ``all --smoke``), not a measurement."""

RUNNERS: dict[str, Callable[[Any], Coroutine[Any, Any, Result]]] = {
    "latency": latency.run,
    "throughput": throughput.run,
    "idle": idle.run,
    "fleet": fleet.run,
    "failover": failover.run,
    "sporadic": sporadic.run,
}
ALL_ARGS: dict[str, list[str]] = {"sporadic": ["--quick"]}
"""Extra arguments of a scenario in ``all`` (the full ``sporadic`` run takes about an hour)."""


def _implementations(value: str) -> tuple[str, ...]:
    if value == "both":
        return latency.IMPLEMENTATIONS
    if value not in latency.IMPLEMENTATIONS:
        raise argparse.ArgumentTypeError(f"expected temporal, baseline or both, not {value!r}")
    return (value,)


def _failover_timeout(value: str) -> float | None:
    if value == "default":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'default', not {value!r}") from None


def _option(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {value!r}")
    return key, val


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of molecule-connect-temporal against a plain asyncio loop (see benchmarks/RESULTS.md).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for <scenario>.json/.md")
    common.add_argument(
        "--profile",
        action="store_true",
        help="profile the run with pyinstrument (main thread only; see RESULTS.md for py-spy) into --out",
    )
    sub = parser.add_subparsers(dest="scenario", required=True)

    p = sub.add_parser("latency", parents=[common], help="one workspace, messages paced one at a time")
    d = latency.LatencyParams()
    p.add_argument("--messages", type=int, default=d.messages, help=f"measured messages (default {d.messages})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"unmeasured first messages (default {d.warmup})")
    p.add_argument("--poll-interval", type=float, default=d.poll_interval_s, help="seconds (default 1)")
    p.add_argument(
        "--fast-poll-interval",
        type=float,
        default=d.fast_poll_interval_s,
        help="second, short interval; 0 skips it (default 0.2)",
    )
    p.add_argument("--impl", type=_implementations, default=d.implementations, help="temporal, baseline or both")
    p.add_argument("--no-jitter", action="store_true", help="send right after the previous reply")

    p = sub.add_parser("throughput", parents=[common], help="W workspaces × M messages in one burst")
    t = throughput.ThroughputParams()
    p.add_argument("--workspaces", type=int, default=t.workspaces, help=f"default {t.workspaces}")
    p.add_argument("--messages", type=int, default=t.messages, help=f"per workspace per run (default {t.messages})")
    p.add_argument(
        "--conversations", type=int, default=t.conversations, help=f"per workspace (default {t.conversations})"
    )
    p.add_argument("--runs", type=int, default=t.runs, help=f"measured bursts (default {t.runs})")
    p.add_argument("--warmup", type=int, default=t.warmup, help="messages per workspace in the warm-up burst")
    p.add_argument("--poll-interval", type=float, default=t.poll_interval_s, help="seconds (default 1)")
    p.add_argument("--max-concurrency", type=int, default=t.max_concurrency, help="connector lanes (default 4)")
    p.add_argument("--impl", type=_implementations, default=t.implementations, help="temporal, baseline or both")
    p.add_argument("--backend", default=t.backend, help="backend name (default echo)")
    p.add_argument(
        "--worker-processes",
        type=int,
        default=t.worker_processes,
        help="worker processes for the connector on one task queue (default 1)",
    )
    p.add_argument("-o", "--backend-option", type=_option, action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("idle", parents=[common], help="N idle workspaces for T minutes: history, actions, requests")
    i = idle.IdleParams()
    p.add_argument("--workspaces", type=int, default=i.workspaces, help=f"default {i.workspaces}")
    p.add_argument("--minutes", type=float, default=i.minutes, help=f"window length (default {i.minutes:g})")
    p.add_argument("--poll-interval", type=float, default=i.poll_interval_s, help="seconds (default 1)")
    p.add_argument("--poll-max-wait", type=float, default=i.poll_max_wait_s, help="seconds (default 600)")
    p.add_argument("--heartbeat-run-for", type=float, default=i.heartbeat_run_for_s, help="seconds (default 3600)")
    p.add_argument("--calibration", type=float, default=i.calibration_s, help="cycle calibration seconds; 0 skips")
    p.add_argument(
        "--failover-timeout",
        type=_failover_timeout,
        default=None,
        help="the session's failover_timeout_s (default: 1.2 × the heartbeat interval)",
    )

    p = sub.add_parser("fleet", parents=[common], help="K workspaces on one worker process, default budget")
    f = fleet.FleetParams()
    p.add_argument("--workspaces", type=int, default=f.workspaces, help=f"default {f.workspaces}")
    p.add_argument("--poll-interval", type=float, default=f.poll_interval_s, help="seconds (default 1)")
    p.add_argument("--settle", type=float, default=f.settle_s, help="seconds after online before the hold (90)")
    p.add_argument("--hold", type=float, default=f.hold_s, help="seconds the settled fleet is held (default 150)")
    p.add_argument("--probes", type=int, default=f.probes, help=f"first-message probes (default {f.probes})")
    p.add_argument("--status-every", type=float, default=f.status_every_s, help="status sweep period (default 30)")
    p.add_argument(
        "--request-budget",
        type=float,
        default=f.request_budget_per_min,
        help=f"the worker's requests/min (default {f.request_budget_per_min:g}; 0: unlimited)",
    )
    p.add_argument(
        "--platform-rate-limit",
        type=int,
        default=f.platform_rate_limit_per_min,
        help=f"the platform's requests/min per IP (default {f.platform_rate_limit_per_min}; 0: off)",
    )

    p = sub.add_parser("sporadic", parents=[common], help="1 workspace, messages after silences of 30 s to 5 min")
    sp = sporadic.SporadicParams()
    p.add_argument("--messages", type=int, default=None, help=f"messages after a silence (default {sp.messages})")
    p.add_argument(
        "--silence",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help=f"silence before each message, seconds (default {sp.min_silence_s:g} {sp.max_silence_s:g})",
    )
    p.add_argument("--burst", type=int, default=None, help=f"closing burst per exec workspace (default {sp.burst})")
    p.add_argument(
        "--replicas", type=int, default=None, help=f"workspaces per implementation and backend (default {sp.replicas})"
    )
    p.add_argument("--poll-interval", type=float, default=sp.poll_interval_s, help="seconds (default 1)")
    p.add_argument("--backend-delay", type=float, default=sp.backend_delay_s, help="exec backend sleep (0.2 s)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{sporadic.QUICK.messages} messages, silences of {sporadic.QUICK.min_silence_s:g}–"
        f"{sporadic.QUICK.max_silence_s:g} s, burst {sporadic.QUICK.burst} (~10 min instead of ~1 h)",
    )

    p = sub.add_parser("failover", parents=[common], help="N workspaces on two worker processes, one SIGKILLed")
    o = failover.FailoverParams()
    p.add_argument("--workspaces", type=int, default=o.workspaces, help=f"default {o.workspaces}")
    p.add_argument(
        "--failover-timeout",
        type=_failover_timeout,
        action="append",
        dest="failover_timeouts",
        help="failover_timeout_s of one round; repeat for several; 'default' is 1.2 × the heartbeat interval "
        "(default: default and 8)",
    )
    p.add_argument("--heartbeat-interval", type=float, default=o.heartbeat_interval_s, help="seconds (default 30)")
    p.add_argument(
        "--lease-timeout",
        type=float,
        default=o.lease_timeout_s,
        help=f"the workers' --lease-timeout, seconds; 0: no lease (default {o.lease_timeout_s:g})",
    )
    p.add_argument("--poll-interval", type=float, default=o.poll_interval_s, help="seconds (default 1)")
    p.add_argument("--settle", type=float, default=o.settle_s, help="seconds before the window (60)")
    p.add_argument("--window", type=float, default=o.window_s, help=f"idle action window (default {o.window_s:g})")
    p.add_argument("--observe", type=float, default=o.observe_s, help="seconds after the kill (120)")
    p.add_argument("--stop", choices=("kill", "freeze"), default=o.stop, help="SIGKILL (default) or SIGSTOP the worker")

    p = sub.add_parser("all", parents=[common], help="every scenario with its defaults, then summary.md")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs, measures nothing")
    return parser


def params_from(args: argparse.Namespace) -> Any:
    """The scenario's parameters from parsed arguments."""
    if args.scenario == "latency":
        return latency.LatencyParams(
            messages=args.messages,
            warmup=args.warmup,
            poll_interval_s=args.poll_interval,
            fast_poll_interval_s=args.fast_poll_interval or None,
            implementations=args.impl,
            jitter=not args.no_jitter,
        )
    if args.scenario == "throughput":
        return throughput.ThroughputParams(
            workspaces=args.workspaces,
            messages=args.messages,
            conversations=args.conversations,
            runs=args.runs,
            warmup=args.warmup,
            poll_interval_s=args.poll_interval,
            max_concurrency=args.max_concurrency,
            implementations=args.impl,
            backend=args.backend,
            backend_options=dict(args.backend_option),
            worker_processes=args.worker_processes,
        )
    if args.scenario == "idle":
        return idle.IdleParams(
            workspaces=args.workspaces,
            minutes=args.minutes,
            poll_interval_s=args.poll_interval,
            poll_max_wait_s=args.poll_max_wait,
            heartbeat_run_for_s=args.heartbeat_run_for,
            calibration_s=args.calibration,
            failover_timeout_s=args.failover_timeout,
        )
    if args.scenario == "fleet":
        return fleet.FleetParams(
            workspaces=args.workspaces,
            poll_interval_s=args.poll_interval,
            settle_s=args.settle,
            hold_s=args.hold,
            probes=args.probes,
            status_every_s=args.status_every,
            request_budget_per_min=args.request_budget,
            platform_rate_limit_per_min=args.platform_rate_limit,
        )
    if args.scenario == "sporadic":
        base = sporadic.QUICK if args.quick else sporadic.SporadicParams()
        silence = args.silence or (base.min_silence_s, base.max_silence_s)
        if not 0 <= silence[0] <= silence[1]:
            raise SystemExit("--silence MIN MAX needs 0 <= MIN <= MAX")
        return dataclasses.replace(
            base,
            messages=base.messages if args.messages is None else args.messages,
            min_silence_s=silence[0],
            max_silence_s=silence[1],
            burst=base.burst if args.burst is None else args.burst,
            replicas=base.replicas if args.replicas is None else args.replicas,
            poll_interval_s=args.poll_interval,
            backend_delay_s=args.backend_delay,
        )
    if args.scenario == "failover":
        return failover.FailoverParams(
            workspaces=args.workspaces,
            failover_timeouts=tuple(args.failover_timeouts or failover.FailoverParams().failover_timeouts),
            heartbeat_interval_s=args.heartbeat_interval,
            poll_interval_s=args.poll_interval,
            settle_s=args.settle,
            window_s=args.window,
            observe_s=args.observe,
            stop=args.stop,
            lease_timeout_s=args.lease_timeout,
        )
    raise ValueError(args.scenario)


async def run_scenario(name: str, params: Any, out: Path) -> Result:
    """Run one scenario, write its report into ``out`` and print its table."""
    result = await RUNNERS[name](params)
    json_path, md_path = write(result, out)
    print(figures_table([result]))
    print(f"\nwrote {json_path} and {md_path}")
    return result


async def _main(args: argparse.Namespace) -> None:
    if args.scenario != "all":
        await run_scenario(args.scenario, params_from(args), args.out)
        return
    results = []
    for name in RUNNERS:
        if args.smoke:
            results.append(await run_scenario(name, SMOKE[name], args.out))
            continue
        # A process per scenario, so memory and CPU figures are not inherited from the previous scenario.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks", name, "--out", str(args.out), *ALL_ARGS.get(name, [])
        )
        if await proc.wait() != 0:
            sys.exit(f"benchmark {name} failed (exit {proc.returncode})")
        results.append(load(args.out / f"{name}.json"))
    summary = args.out / "summary.md"
    summary.write_text(f"# Benchmarks\n\n- Machine: {machine_line(results[0].machine)}\n\n{figures_table(results)}\n")
    print(f"wrote {summary}")


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if not args.profile:
        event_loop.run(_main(args))
        return
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: .venv/bin/pip install pyinstrument")
    profiler = Profiler(async_mode="disabled")
    profiler.start()
    try:
        event_loop.run(_main(args))
    finally:
        profiler.stop()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.scenario}.profile.txt").write_text(profiler.output_text(unicode=True, show_all=False))
        (args.out / f"{args.scenario}.profile.html").write_text(profiler.output_html())
        print(f"wrote {args.out / f'{args.scenario}.profile.txt'}")


if __name__ == "__main__":
    main()
