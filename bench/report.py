"""Summaries and markdown tables for bench/run.py results (medians across runs)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
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


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


def _per_ack_us(step: dict[str, Any] | None) -> float | None:
    if not step or step.get("server_cpu") is None or not step["acked_per_s"]:
        return None
    return 1e6 * step["server_cpu"] / step["acked_per_s"]


PERSIST_KEYS = {
    "max": lambda r: r["max_acked_per_s_within_p99"],
    "p50": lambda r: (r["max_ok_step"] or {}).get("p50_ms"),
    "p99": lambda r: (r["max_ok_step"] or {}).get("p99_ms"),
    "srv_us": lambda r: _per_ack_us(r["max_ok_step"]),
    "lg_cpu": lambda r: (r["max_ok_step"] or {}).get("loadgen_cpu"),
}
IDLE_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "kb": lambda r: r["kb_per_connection"],
    "conn_per_s": lambda r: r["connections_per_s"],
    "connect_s": lambda r: r["connect_s"],
    "connect_p99": lambda r: r["connect_p99_ms"],
    "rss_before_mb": lambda r: _mb(r["rss_before_kb"]),
    "rss_after_mb": lambda r: _mb(r["rss_after_kb"]),
    "ping_p50": lambda r: r["ping_p50_ms"],
    "ping_max": lambda r: r["ping_max_ms"],
    "late_ms": lambda r: r["late_connect_ms"],
    "srv_us": lambda r: r["server_us_per_connection"],
    "frames": lambda r: r["frames"],
    "lg_cpu": lambda r: r["loadgen_cpu"],
}
#: The issue's target for idle connections: server RSS per connection.
IDLE_TARGET_KB = 12
STEP_KEYS = ["acked_per_s", "p50_ms", "p99_ms", "max_ms", "errors", "unacked"]


def keys_for(scenario: str | None) -> dict[str, Any]:
    """The headline getters of a scenario (by run.py name or loadgen scenario)."""
    if scenario == "echo":
        return ECHO_KEYS
    if scenario == "persist":
        return PERSIST_KEYS
    if scenario and scenario.startswith("idle"):
        return IDLE_KEYS
    return FANOUT_KEYS


def stopped_by(result: dict[str, Any]) -> str:
    """Why a persist run stopped stepping: its failing step, or the top rate passed."""
    if result["ceiling_hit"]:
        return "none (top rate passed)"
    step = result["steps"][-1]
    return f"{step['offered_per_s']:,}/s: {', '.join(step['fail'])}"


def persist_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per offered rate, the medians over the runs that reached that step."""
    by_rate: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        for step in r["steps"]:
            by_rate.setdefault(step["offered_per_s"], []).append(step)
    out = []
    for rate, steps in sorted(by_rate.items()):
        cell: dict[str, Any] = {"offered_per_s": rate, "runs": len(steps)}
        for key in STEP_KEYS:
            values = [s[key] for s in steps if s[key] is not None]
            cell[key] = statistics.median(values) if values else None
        cell["passed"] = sum(1 for s in steps if s["ok"])
        codes: dict[str, int] = {}
        for step in steps:
            for code, n in step["error_codes"].items():
                codes[code] = codes.get(code, 0) + n
        cell["error_codes"] = codes
        out.append(cell)
    return out


def brief(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one raw result, for progress output."""
    keys = keys_for(result.get("scenario_name"))
    out: dict[str, Any] = {k: result[k] for k in ("target", "scenario_name", "run")}
    if "error" in result:
        return {**out, "error": result["error"][-300:]}
    out.update({name: get(result) for name, get in keys.items()})
    out["server_cpu"] = result.get("server_cpu")
    out["other_cpu"] = result.get("other_cpu")
    fixed = result.get("fixed") or result.get("max_ok_step") or result
    out["loadgen_cpu"] = fixed.get("loadgen_cpu")
    if result.get("scenario") == "persist":
        out["stopped_by"] = stopped_by(result)
    return out


def summarize(
    raw: list[dict[str, Any]], targets: list[str], scenarios: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """summary[scenario][target] = medians of max, p50, p99 (+ every run's max)."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in scenarios:
        keys = keys_for(scenario)
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
            if scenario == "persist":
                cell["stopped_by"] = [stopped_by(r) for r in rows]
                cell["steps"] = persist_steps(rows)
            if scenario.startswith("idle"):
                cell["every"] = [idle_run(r) for r in rows]
            summary[scenario][target] = cell
    return summary


def idle_run(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one idle run kept in the summary (for the every-run table)."""
    keys = ("run", "clients", "connected", "connect_s", "connections_per_s", "connect_p99_ms")
    out = {k: r.get(k) for k in keys}
    out.update({name: get(r) for name, get in IDLE_KEYS.items()})
    out["presence"] = r["frame_types"].get("presence", 0)
    out["failures"] = sum(r["failures"].values())
    out["disconnects"] = r["disconnects"]
    out["other_cpu"] = r.get("other_cpu")
    return out


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
    notes: dict[str, str] | None = None,
) -> str:
    lines = [f"Medians of {runs} run(s); ratios are vs the Node reference (`node`).", ""]
    for scenario in scenarios:
        cells = summary[scenario]
        if scenario == "persist":
            lines += persist_tables(cells, targets, (notes or {}).get(scenario))
            continue
        if scenario.startswith("idle"):
            lines += idle_tables(scenario, cells, targets)
            continue
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
    for scenario, note in (notes or {}).items():
        if scenario not in scenarios:
            lines += [f"### {scenario}", "", note, ""]
    return "\n".join(lines)


def fmt1(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def idle_tables(scenario: str, cells: dict[str, dict[str, Any]], targets: list[str]) -> list[str]:
    """The idle headline table (medians), then every run."""
    ref = cells.get("node", {}).get("kb")
    lines = [
        f"### {scenario}",
        "",
        "| target | connections | connect s | conn/s | connect p99 ms | RSS before MB "
        f"| RSS after MB | KB per connection | vs node | ≤ {IDLE_TARGET_KB} KB "
        "| ping p50 ms (all connected) | ping max ms | late connect ms "
        "| server µs CPU per connection | frames to idle clients | runs (KB/conn) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for target in targets:
        c = cells[target]
        every = ", ".join(fmt1(v) for v in c["kb_all"]) or f"{c['errors']} error(s)"
        connected = ", ".join(sorted({fmt(e["connected"]) for e in c.get("every", [])}))
        met = "-" if c["kb"] is None else ("yes" if c["kb"] <= IDLE_TARGET_KB else "**no**")
        lines.append(
            f"| {target} | {connected or '-'} | {fmt1(c['connect_s'])} | {fmt(c['conn_per_s'])} "
            f"| {fmt(c['connect_p99'])} | {fmt1(c['rss_before_mb'])} "
            f"| {fmt1(c['rss_after_mb'])} | {fmt1(c['kb'])} | {ratio(c['kb'], ref)} | {met} "
            f"| {fmt(c['ping_p50'], 'ms')} | {fmt(c['ping_max'], 'ms')} "
            f"| {fmt(c['late_ms'], 'ms')} | {fmt(c['srv_us'])} | {fmt(c['frames'])} | {every} |"
        )
    lines += [
        "",
        "Every run:",
        "",
        "| target | run | connected/clients | connect s | conn/s | connect p99 ms "
        "| RSS before MB | RSS after MB | KB per connection | ping p50 ms | presence frames "
        "| failures | drops | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        for e in cells[target].get("every", []):
            lines.append(
                f"| {target} | {e['run']} | {fmt(e['connected'])}/{fmt(e['clients'])} "
                f"| {fmt1(e['connect_s'])} | {fmt(e['conn_per_s'])} | {fmt(e['connect_p99'])} "
                f"| {fmt1(e['rss_before_mb'])} | {fmt1(e['rss_after_mb'])} | {fmt1(e['kb'])} "
                f"| {fmt(e['ping_p50'], 'ms')} | {fmt(e['presence'])} | {e['failures']} "
                f"| {e['disconnects']} | {fmt(e['other_cpu'], 'ms')} |"
            )
    lines.append("")
    return lines


def persist_tables(
    cells: dict[str, dict[str, Any]], targets: list[str], note: str | None
) -> list[str]:
    """The persist headline table, then each measured target's steps."""
    lines = [
        "### persist",
        "",
        "| target | max acked msgs/s (all acked, p99 in bound) | p50 ms at max | p99 ms at max "
        "| server µs CPU per ack at max | loadgen CPU at max | stopped by | runs (max) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    measured = [t for t in targets if cells[t]["runs"] or cells[t]["errors"]]
    for target in measured:
        c = cells[target]
        every = ", ".join(fmt(v) for v in c["max_all"]) or f"{c['errors']} error(s)"
        lines.append(
            f"| {target} | {fmt(c['max'])} | {fmt(c['p50'], 'ms')} | {fmt(c['p99'], 'ms')} "
            f"| {fmt(c['srv_us'], 'ms')} | {fmt(c['lg_cpu'], 'ms')} "
            f"| {'; '.join(c.get('stopped_by', [])) or '-'} | {every} |"
        )
    lines.append("")
    if note:
        lines += [note, ""]
    for target in measured:
        steps = cells[target].get("steps") or []
        if not steps:
            continue
        lines += [
            f"{target}, per step (medians over the runs that reached it):",
            "",
            "| offered msgs/s | acked msgs/s | p50 ms | p99 ms | max ms | errors (codes) "
            "| unacked | passed/runs |",
            "|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for s in steps:
            codes = ", ".join(f"{k} {v}" for k, v in sorted(s["error_codes"].items()))
            lines.append(
                f"| {fmt(s['offered_per_s'])} | {fmt(s['acked_per_s'])} "
                f"| {fmt(s['p50_ms'], 'ms')} | {fmt(s['p99_ms'], 'ms')} "
                f"| {fmt(s['max_ms'], 'ms')} | {fmt(s['errors'])}{f' ({codes})' if codes else ''} "
                f"| {fmt(s['unacked'])} | {s['passed']}/{s['runs']} |"
            )
        lines.append("")
    return lines


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
