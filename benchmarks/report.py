"""Scenario results: the headline figures beside the baseline and the target, written as JSON and markdown.

A scenario returns a :class:`Result`; :func:`write` saves ``<out>/<scenario>.json`` (everything, including the
raw details) and ``<out>/<scenario>.md`` (machine facts, parameters and the figures table). :func:`summary_table`
renders several results as the one table of ``RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.stats import ratio


@dataclass(frozen=True)
class Figure:
    """One headline number.

    Attributes:
        name: What was measured, e.g. ``latency p50 (poll 1 s)``.
        unit: ``ms``, ``msg/s``, ``events/ws-h``…
        value: The connector's figure (``None`` when not measured).
        baseline: The plain-loop baseline's figure under the same conditions, when there is one.
        target: The issue's target, in words (``≤ 1.25× baseline``).
        meets: Whether the target is met (``None``: no target, or not decidable).
        note: How it was measured, when the name does not say it.
    """

    name: str
    unit: str
    value: float | None
    baseline: float | None = None
    target: str | None = None
    meets: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """``value / baseline``."""
        return ratio(self.value, self.baseline)


@dataclass
class Result:
    """What one scenario run produced."""

    scenario: str
    params: dict[str, Any]
    machine: dict[str, Any]
    figures: list[Figure]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, figures with their ratio."""
        data = asdict(self)
        data["figures"] = [{**asdict(f), "ratio": f.ratio} for f in self.figures]
        return data


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def figures_table(results: list[Result]) -> str:
    """Markdown table of every figure: scenario, figure, ours, baseline, ratio, target, met."""
    lines = [
        "| scenario | figure | connector | baseline | ratio | target | met |",
        "|---|---|---:|---:|---:|---|:-:|",
    ]
    for result in results:
        for f in result.figures:
            unit = f" {f.unit}" if f.unit else ""
            lines.append(
                f"| {result.scenario} | {f.name} | {_fmt(f.value)}{unit} | "
                f"{_fmt(f.baseline) + unit if f.baseline is not None else '–'} | "
                f"{_fmt(f.ratio) + '×' if f.ratio is not None else '–'} | {f.target or '–'} | {_fmt(f.meets)} |"
            )
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    """One line of machine facts."""
    memory = machine.get("memory_total_bytes")
    modified = machine.get("tree_modified") or []
    return (
        f"{machine.get('cpu_count')} CPU ({machine.get('cpu_model')}), "
        f"{round(memory / 2**30, 1) if memory else '?'} GiB RAM, {machine.get('os')}; "
        f"Python {machine.get('python')}, temporalio {machine.get('temporalio')}, "
        f"{machine.get('temporal_server')}; commit {machine.get('commit')}"
        + (f" with local changes in {', '.join(modified)}" if modified else "")
    )


def to_markdown(result: Result) -> str:
    """A scenario's markdown report."""
    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    parts = [
        f"# Benchmark: {result.scenario}",
        "",
        f"- Machine: {machine_line(result.machine)}",
        f"- Command: `{result.machine.get('command')}`",
        f"- Parameters: {params}",
        f"- Measured at {result.machine.get('measured_at')}, wall time {result.wall_s:.0f} s",
        "",
        figures_table([result]),
    ]
    if result.notes:
        parts += ["", *[f"- {note}" for note in result.notes]]
    return "\n".join(parts) + "\n"


def write(result: Result, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<scenario>.json`` and ``<scenario>.md`` into ``out_dir`` (created); return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{result.scenario}.json"
    md_path = out_dir / f"{result.scenario}.md"
    json_path.write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    md_path.write_text(to_markdown(result))
    return json_path, md_path


def load(path: Path) -> Result:
    """Read a ``<scenario>.json`` back."""
    data = orjson.loads(path.read_bytes())
    figures = [Figure(**{k: v for k, v in f.items() if k != "ratio"}) for f in data.pop("figures")]
    return Result(figures=figures, **data)
