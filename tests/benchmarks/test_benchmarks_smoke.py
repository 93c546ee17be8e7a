"""Every benchmark scenario runs end to end at a tiny size and reports its keys. Never asserts on timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks.__main__ import SMOKE, build_parser, params_from, run_scenario
from benchmarks.report import Result

pytestmark = pytest.mark.timeout(120)

MACHINE_KEYS = {"cpu_count", "python", "temporalio", "temporal_server", "commit"}


def _check(result: Result, out: Path, *, figures: set[str]) -> dict:
    data = orjson.loads((out / f"{result.scenario}.json").read_bytes())
    assert MACHINE_KEYS <= set(data["machine"])
    assert {"scenario", "params", "figures", "details", "wall_s"} <= set(data)
    names = {f["name"] for f in data["figures"]}
    assert figures <= names, figures - names
    assert (out / f"{result.scenario}.md").read_text().startswith(f"# Benchmark: {result.scenario}")
    return data


async def test_latency_smoke_run_reports_both_implementations(tmp_path: Path) -> None:
    result = await run_scenario("latency", SMOKE["latency"], tmp_path)
    data = _check(result, tmp_path, figures={"latency p50 (poll 0.2 s)", "overhead beyond poll wait p50 (poll 0.2 s)"})
    runs = data["details"]["runs"]
    assert {r["implementation"] for r in runs} == {"temporal", "baseline"}
    assert all(r["latency_ms"]["n"] == SMOKE["latency"].messages for r in runs)


async def test_throughput_smoke_run_replies_to_every_message(tmp_path: Path) -> None:
    result = await run_scenario("throughput", SMOKE["throughput"], tmp_path)
    data = _check(result, tmp_path, figures={"throughput (median of runs)", "worker process CPU per message"})
    params = SMOKE["throughput"]
    for implementation in ("temporal", "baseline"):
        (run,) = data["details"]["implementations"][implementation]["runs"]
        assert run["messages"] == params.workspaces * params.messages


async def test_idle_smoke_run_counts_history_and_requests(tmp_path: Path) -> None:
    result = await run_scenario("idle", SMOKE["idle"], tmp_path)
    data = _check(
        result,
        tmp_path,
        figures={"history events per workspace-hour, steady state", "platform inbox reads per workspace-minute"},
    )
    assert data["details"]["calibration"]["cycles"] > 0
    assert "events_in_window" in data["details"]


async def test_fleet_smoke_run_brings_every_workspace_online(tmp_path: Path) -> None:
    result = await run_scenario("fleet", SMOKE["fleet"], tmp_path)
    data = _check(result, tmp_path, figures={"time to all registered (online)", "heartbeat gap max"})
    assert data["details"]["status_sweeps"][0].get("online") == SMOKE["fleet"].workspaces
    assert data["details"]["probe"]["latency_ms"]["n"] == SMOKE["fleet"].probes


def test_cli_help_and_params_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["throughput", "--workspaces", "3", "--impl", "baseline", "-o", "template=x {text}"])
    params = params_from(args)
    assert params.workspaces == 3
    assert params.implementations == ("baseline",)
    assert params.backend_options == {"template": "x {text}"}
    with pytest.raises(SystemExit):
        parser.parse_args(["latency", "--help"])


def test_spawn_cost_smoke_run_reports_every_combination() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.spawn_cost", "--spawns", "10", "--heaps", "5"],
        check=True,
        capture_output=True,
        text=True,
        timeout=100,
    )

    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ") and "MiB" in line]
    assert len(rows) == 4, completed.stdout  # 2 loops × 1 heap × 2 spawners
    assert {row.split("|")[3].strip() for row in rows} == {"`create_subprocess_exec`", "`spawn()`"}


async def test_failover_smoke_run_answers_after_the_kill(tmp_path: Path) -> None:
    result = await run_scenario("failover", SMOKE["failover"], tmp_path)
    data = _check(result, tmp_path, figures=set())
    assert any(f["name"].startswith("heartbeat gap max, the dead worker's") for f in data["figures"])
    (round_,) = data["details"]["rounds"]
    params = SMOKE["failover"]
    assert round_["moved"] >= 1
    assert round_["moved_to_survivor"] == round_["moved"]
    assert round_["replies"] == params.workspaces
    assert round_["max_silence_moved_s"]["n"] == round_["moved"]


async def test_sporadic_smoke_run_answers_every_message_on_both_implementations(tmp_path: Path) -> None:
    result = await run_scenario("sporadic", SMOKE["sporadic"], tmp_path)
    data = _check(
        result,
        tmp_path,
        figures={"latency p50 after a silence (echo)", "latency p95 after a silence (0.2 s exec)"},
    )
    params = SMOKE["sporadic"]
    agents = data["details"]["agents"]
    assert set(agents) == {"temporal/echo", "temporal/exec", "baseline/echo", "baseline/exec"}
    assert all(a["latency_ms"]["n"] == params.messages * params.replicas for a in agents.values())
    assert agents["temporal/exec"]["burst"]["messages"] == params.burst
    assert not any(key.endswith(" 429") for key in data["details"]["platform_requests"])


def test_sporadic_quick_and_silence_options_parse() -> None:
    parser = build_parser()
    params = params_from(parser.parse_args(["sporadic", "--quick", "--silence", "1", "2", "--messages", "3"]))
    assert (params.messages, params.min_silence_s, params.max_silence_s) == (3, 1.0, 2.0)
    with pytest.raises(SystemExit):
        params_from(parser.parse_args(["sporadic", "--silence", "5", "1"]))
