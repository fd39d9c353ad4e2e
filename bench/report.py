"""Summaries and markdown tables for bench/run.py results (medians across runs)."""

from __future__ import annotations

import statistics
from typing import Any

FANOUT_KEYS = {
    "max": lambda r: r["max_ok_deliveries_per_s"],
    "p50": lambda r: r["fixed"]["p50_ms"],
    "p99": lambda r: r["fixed"]["p99_ms"],
    "srv_us": lambda r: 1e6 * r["fixed"]["server_cpu"] / r["fixed"]["delivered_per_s"],
    "lg_cpu": lambda r: (r["max_ok_step"] or {}).get("loadgen_cpu"),
}
ECHO_KEYS = {
    "max": lambda r: r["round_trips_per_s"],
    "p50": lambda r: r["p50_ms"],
    "p99": lambda r: r["p99_ms"],
    "srv_us": lambda r: 1e6 * r["server_cpu"] / r["round_trips_per_s"],
    "lg_cpu": lambda r: r["loadgen_cpu"],
}


def brief(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one raw result, for progress output."""
    keys = FANOUT_KEYS if result.get("scenario") == "fanout" else ECHO_KEYS
    out: dict[str, Any] = {k: result[k] for k in ("target", "scenario_name", "run")}
    if "error" in result:
        return {**out, "error": result["error"][-300:]}
    out.update({name: get(result) for name, get in keys.items()})
    out["server_cpu"] = result.get("server_cpu")
    out["other_cpu"] = result.get("other_cpu")
    fixed = result.get("fixed", result)
    out["loadgen_cpu"] = fixed.get("loadgen_cpu")
    return out


def summarize(
    raw: list[dict[str, Any]], targets: list[str], scenarios: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """summary[scenario][target] = medians of max, p50, p99 (+ every run's max)."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in scenarios:
        keys = ECHO_KEYS if scenario == "echo" else FANOUT_KEYS
        summary[scenario] = {}
        for target in targets:
            rows = [
                r
                for r in raw
                if r["scenario_name"] == scenario and r["target"] == target and "error" not in r
            ]
            errors = sum(
                1
                for r in raw
                if r["scenario_name"] == scenario and r["target"] == target and "error" in r
            )
            cell: dict[str, Any] = {"runs": len(rows), "errors": errors}
            for name, get in keys.items():
                values = [v for v in map(get, rows) if v is not None]
                cell[name] = statistics.median(values) if values else None
                cell[f"{name}_all"] = values
            summary[scenario][target] = cell
    return summary


def ratio(value: float | None, reference: float | None) -> str:
    if not value or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{round(value):,}"


def markdown(
    summary: dict[str, dict[str, dict[str, Any]]],
    targets: list[str],
    scenarios: list[str],
    runs: int,
) -> str:
    lines = [f"Medians of {runs} run(s); ratios are vs the Node reference (`node`).", ""]
    for scenario in scenarios:
        cells = summary[scenario]
        ref = cells.get("node", {}).get("max")
        if scenario == "echo":
            head = (
                "| target | round trips/s | vs node | p50 ms | p99 ms "
                "| server µs CPU per round trip | loadgen CPU | runs (rt/s) |"
            )
        else:
            head = (
                "| target | max deliveries/s (no loss, p99 bound) | vs node "
                "| p50 ms @20k/s | p99 ms @20k/s | server µs CPU per delivery @20k/s "
                "| loadgen CPU at max | runs (max) |"
            )
        lines += [f"### {scenario}", "", head, "|---|---:|---:|---:|---:|---:|---:|---|"]
        for target in targets:
            c = cells[target]
            every = ", ".join(fmt(v) for v in c["max_all"]) or f"{c['errors']} error(s)"
            lines.append(
                f"| {target} | {fmt(c['max'])} | {ratio(c['max'], ref)} | "
                f"{fmt(c['p50'], 'ms')} | {fmt(c['p99'], 'ms')} | {fmt(c['srv_us'], 'ms')} "
                f"| {fmt(c['lg_cpu'], 'ms')} | {every} |"
            )
        lines.append("")
    return "\n".join(lines)


def loadgen_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| load generator | target deliveries/s | delivered/s | lost | p99 ms "
        "| loadgen CPU | server CPU | µs CPU per delivery |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loadgen']} | {r['target_deliveries_per_s']:,} | error |||||| ")
            continue
        per = 1e6 * r["loadgen_cpu"] / max(1, r["delivered_per_s"])
        lines.append(
            f"| {r['loadgen']} | {r['target_deliveries_per_s']:,} | {r['delivered_per_s']:,} "
            f"| {r['lost']} | {r['p99_ms']:.1f} | {r['loadgen_cpu']:.2f} "
            f"| {r['server_cpu']:.2f} | {per:.1f} |"
        )
    return "\n".join(lines) + "\n"
