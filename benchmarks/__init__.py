"""Benchmarks: what durable delivery through Temporal costs, measured side by side with a plain asyncio loop.

Run ``python -m benchmarks <scenario> [--options] [--out DIR]`` (``--help`` lists them); results and how they were
measured are in ``benchmarks/RESULTS.md``.

Modules:

- ``__main__``: the command line; writes ``<out>/<scenario>.json`` and ``.md``.
- ``latency``: one workspace, messages paced one at a time; latency, poll wait and the overhead beyond it.
- ``throughput``: W workspaces × M messages in one burst; messages per second, CPU, round trips per message; over
  one or more worker processes.
- ``idle``: N idle workspaces for T minutes; history events and billable actions per workspace-hour, requests.
- ``fleet``: K workspaces on one worker process on the default budget; time to online, memory, CPU, heartbeat gaps,
  inbox read intervals, first-message latency, ``429`` answers.
- ``sporadic``: one workspace, messages after silences of 30 s to 5 min; first-message latency beside the baseline.
- ``baseline_loop``: the protocol as a plain asyncio loop shaped like the Go CLI (the ratio's denominator).
- ``stack``: one scenario's world: Temporal dev server, devplatform process, workspaces, worker.
- ``platform_process``: the devplatform in a child process, wrapped in a request log the scenarios read.
- ``deliveries``: per-message timings read back from the platform's rows and request log.
- ``machine``: machine facts and process CPU/memory from ``/proc``.
- ``stats``, ``report``: percentiles; figures beside baseline and target, as JSON and markdown.

Contract: every scenario starts its own stack and tears it down; all timings of a message come from the platform
process's clock; nothing in the test suite asserts on these figures (``tests/benchmarks`` only checks that each
scenario runs and reports its keys).
"""
