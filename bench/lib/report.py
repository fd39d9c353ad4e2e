"""Summaries and markdown tables for bench/run.py results (medians across runs).

The headline figures of each scenario (``*_KEYS``: how a raw result becomes a
cell), the medians across runs, and one markdown table (or several) per scenario.
"""

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
#: The scale-out issue's targets for crossnode: p50 added by crossing nodes,
#: and each receiving node's share of the single node's throughput.
CROSS_ADDED_P50_MS = 2.0
CROSS_PER_NODE_SHARE = 0.70


def _variant(r: dict[str, Any], name: str) -> dict[str, Any]:
    variant: dict[str, Any] = r["variants"][name]
    return variant


def _at_max(r: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] = _variant(r, name).get("max_ok_step") or {}
    return step


def receiving_nodes(variant: dict[str, Any]) -> list[str]:
    """The names of the nodes the receivers are on (B, C; or A for one node)."""
    names = list(variant.get("node_urls", {}))
    return names[1:] or names


def per_receiving_node(variant: dict[str, Any], step: dict[str, Any] | None) -> float | None:
    """Mean deliveries/s of one receiving node in ``step``."""
    if not step or "delivered_per_s_by_url" not in step:
        return None
    urls = variant["node_urls"]
    by_url = step["delivered_per_s_by_url"]
    if len(urls) == 1:
        return float(step["delivered_per_s"])
    values = [by_url.get(urls[n], 0) for n in receiving_nodes(variant)]
    return sum(values) / len(values)


def _cpu(step: dict[str, Any] | None, name: str) -> float | None:
    if not step:
        return None
    value: float | None = (step.get("cpu_by_process") or {}).get(name)
    return value


def _us_per_delivery(step: dict[str, Any] | None) -> float | None:
    cpu = _cpu(step, "nodes")
    if cpu is None or not step or not step["delivered_per_s"]:
        return None
    return 1e6 * cpu / step["delivered_per_s"]


def _per_cpu_second(step: dict[str, Any] | None) -> float | None:
    cpu = _cpu(step, "nodes")
    if not cpu or not step:
        return None
    return step["delivered_per_s"] / cpu


def _receivers_per_cpu(variant: dict[str, Any], step: dict[str, Any] | None) -> float | None:
    """Deliveries per CPU-second of the receiving nodes (B and C) in ``step``."""
    if not step or "delivered_per_s_by_url" not in step or len(variant["node_urls"]) < 2:
        return None
    names = receiving_nodes(variant)
    cpu = sum(_cpu(step, n) or 0.0 for n in names)
    delivered = sum(step["delivered_per_s_by_url"].get(variant["node_urls"][n], 0) for n in names)
    return delivered / cpu if cpu else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


CROSSNODE_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "single_max": lambda r: _variant(r, "single")["max_ok_deliveries_per_s"],
    "cross_max": lambda r: _variant(r, "cross")["max_ok_deliveries_per_s"],
    "single_msgs": lambda r: _variant(r, "single").get("max_ok_msgs_per_s"),
    "cross_msgs": lambda r: _variant(r, "cross").get("max_ok_msgs_per_s"),
    "single_node": lambda r: per_receiving_node(_variant(r, "single"), _at_max(r, "single")),
    "cross_node": lambda r: per_receiving_node(_variant(r, "cross"), _at_max(r, "cross")),
    "ratio_total": lambda r: _ratio(
        _variant(r, "cross")["max_ok_deliveries_per_s"],
        _variant(r, "single")["max_ok_deliveries_per_s"],
    ),
    "ratio_node": lambda r: _ratio(
        per_receiving_node(_variant(r, "cross"), _at_max(r, "cross")),
        per_receiving_node(_variant(r, "single"), _at_max(r, "single")),
    ),
    "single_p50": lambda r: _variant(r, "single")["fixed"]["p50_ms"],
    "cross_p50": lambda r: _variant(r, "cross")["fixed"]["p50_ms"],
    "added_p50": lambda r: _diff(
        _variant(r, "cross")["fixed"]["p50_ms"], _variant(r, "single")["fixed"]["p50_ms"]
    ),
    "single_p99": lambda r: _variant(r, "single")["fixed"]["p99_ms"],
    "cross_p99": lambda r: _variant(r, "cross")["fixed"]["p99_ms"],
    "single_us": lambda r: _us_per_delivery(_variant(r, "single")["fixed"]),
    "cross_us": lambda r: _us_per_delivery(_variant(r, "cross")["fixed"]),
    "single_per_cpu": lambda r: _per_cpu_second(_at_max(r, "single")),
    "cross_per_cpu": lambda r: _per_cpu_second(_at_max(r, "cross")),
    "ratio_per_cpu": lambda r: _ratio(
        _per_cpu_second(_at_max(r, "cross")), _per_cpu_second(_at_max(r, "single"))
    ),
    "recv_per_cpu": lambda r: _receivers_per_cpu(_variant(r, "cross"), _at_max(r, "cross")),
    "ratio_recv_per_cpu": lambda r: _ratio(
        _receivers_per_cpu(_variant(r, "cross"), _at_max(r, "cross")),
        _per_cpu_second(_at_max(r, "single")),
    ),
    "single_redis": lambda r: _cpu(_at_max(r, "single"), "redis"),
    "cross_redis": lambda r: _cpu(_at_max(r, "cross"), "redis"),
    "single_pg": lambda r: _cpu(_at_max(r, "single"), "postgres"),
    "cross_pg": lambda r: _cpu(_at_max(r, "cross"), "postgres"),
    "single_nodes_cpu": lambda r: _cpu(_at_max(r, "single"), "nodes"),
    "cross_nodes_cpu": lambda r: _cpu(_at_max(r, "cross"), "nodes"),
}
STEP_KEYS = ["acked_per_s", "p50_ms", "p99_ms", "max_ms", "errors", "unacked"]


def keys_for(scenario: str | None) -> dict[str, Any]:
    """The headline getters of a scenario (by run.py name or loadgen scenario)."""
    if scenario == "echo":
        return ECHO_KEYS
    if scenario and scenario.startswith("persist"):
        return PERSIST_KEYS
    if scenario == "crossnode":
        return CROSSNODE_KEYS
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
    if result.get("scenario") == "crossnode":
        keys = {k: CROSSNODE_KEYS[k] for k in ("single_max", "cross_max", "ratio_node")}
        keys.update({k: CROSSNODE_KEYS[k] for k in ("single_p50", "cross_p50", "added_p50")})
        return {**out, **{name: get(result) for name, get in keys.items()}}
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
            if scenario.startswith("persist"):
                cell["stopped_by"] = [stopped_by(r) for r in rows]
                cell["steps"] = persist_steps(rows)
                cell["extras"] = [persist_extras(r) for r in rows]
            if scenario == "crossnode":
                cell["every"] = [crossnode_run(r) for r in rows]
            if scenario.startswith("idle"):
                cell["every"] = [idle_run(r) for r in rows]
            summary[scenario][target] = cell
    return summary


def persist_extras(r: dict[str, Any]) -> dict[str, Any]:
    """What a persist-pg run adds: PostgreSQL's CPU, the server's memory, its log."""
    step = r.get("max_ok_step") or {}
    return {
        "run": r.get("run"),
        "max": r["max_acked_per_s_within_p99"],
        "postgres_cpu": r.get("postgres_cpu"),
        "postgres_cpu_at_max": _cpu(step, "postgres"),
        "server_cpu_at_max": step.get("server_cpu"),
        "rss_kb": (r.get("server_memory_kb") or {}).get("VmRSS"),
        "hwm_kb": (r.get("server_memory_kb") or {}).get("VmHWM"),
        "database_mb": r.get("database_mb"),
        "log_problems": (r.get("log_problems") or {}).get("count"),
        "other_cpu": r.get("other_cpu"),
    }


def crossnode_run(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one crossnode run kept in the summary (for the every-run table)."""
    out: dict[str, Any] = {"run": r.get("run"), "order": r.get("order")}
    out.update({name: get(r) for name, get in CROSSNODE_KEYS.items()})
    cross, single = _variant(r, "cross"), _variant(r, "single")
    step = _at_max(r, "cross")
    out["cross_node_cpu_at_max"] = {n: _cpu(step, n) for n in cross.get("node_urls", {})}
    out["cross_by_node_at_max"] = {
        n: (step.get("delivered_per_s_by_url") or {}).get(u)
        for n, u in cross.get("node_urls", {}).items()
    }
    out["stopped"] = {
        name: (v["steps"][-1]["target_deliveries_per_s"] if not v.get("ceiling_hit") else None)
        for name, v in (("single", single), ("cross", cross))
    }
    out["lost_at_fail"] = {
        name: (v["steps"][-1]["lost"] if v.get("steps") and not v["steps"][-1]["ok"] else 0)
        for name, v in (("single", single), ("cross", cross))
    }
    out["other_cpu"] = {
        name: v.get("other_cpu") for name, v in (("single", single), ("cross", cross))
    }
    out["log_problems"] = sum(
        p.get("count", 0) for v in (single, cross) for p in (v.get("log_problems") or {}).values()
    )
    out["redis_keys_left"] = sum(v.get("redis_keys_left") or 0 for v in (single, cross))
    rss = [m.get("VmRSS") for m in (cross.get("node_memory_kb") or {}).values()]
    out["cross_rss_mb"] = [None if v is None else round(v / 1024, 1) for v in rss]
    out["single_rss_mb"] = [
        None if m.get("VmRSS") is None else round(m["VmRSS"] / 1024, 1)
        for m in (single.get("node_memory_kb") or {}).values()
    ]
    return out


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
        if scenario.startswith("persist"):
            lines += persist_tables(cells, targets, (notes or {}).get(scenario), scenario)
            continue
        if scenario == "crossnode":
            lines += crossnode_tables(cells, (notes or {}).get(scenario))
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
    cells: dict[str, dict[str, Any]],
    targets: list[str],
    note: str | None,
    scenario: str = "persist",
) -> list[str]:
    """The persist headline table, then each measured target's steps."""
    lines = [
        f"### {scenario}",
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
        extras = [e for e in cells[target].get("extras", []) if e.get("postgres_cpu") is not None]
        if not extras:
            continue
        lines += [
            f"{target}, every run (PostgreSQL CPU: this database's backends and the WAL "
            "writer, checkpointer and background writer, from /proc):",
            "",
            "| run | max acked msgs/s | server CPU at max | PostgreSQL CPU at max "
            "| PostgreSQL CPU over the run | server RSS at end MB | server peak RSS MB "
            "| database MB | warnings/errors in the log | other CPU |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in extras:
            lines.append(
                f"| {e['run']} | {fmt(e['max'])} | {fmt(e['server_cpu_at_max'], 'ms')} "
                f"| {fmt(e['postgres_cpu_at_max'], 'ms')} | {fmt(e['postgres_cpu'], 'ms')} "
                f"| {fmt1(_mb(e['rss_kb']))} | {fmt1(_mb(e['hwm_kb']))} "
                f"| {fmt1(e['database_mb'])} | {e['log_problems']} "
                f"| {fmt(e['other_cpu'], 'ms')} |"
            )
        lines.append("")
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


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def crossnode_tables(cells: dict[str, dict[str, Any]], note: str | None) -> list[str]:
    """crossnode: one node vs three nodes (medians, ratios vs the targets), every run."""
    lines = ["### crossnode", ""]
    c = cells.get("roomcast")
    if not c or not c["runs"]:
        errors = c["errors"] if c else 0
        return [*lines, note or f"No result ({errors} error(s)).", ""]
    every = c["every"]
    receivers = "one sender, receivers in one room"
    lines += [
        f"{receivers}: one node = every client on node A; three nodes = the sender on A, "
        "the receivers split between B and C. Both with PostgreSQL and Redis; every node "
        "pinned to CPU 0 (three nodes share it), the load generator to CPU 1. Medians of "
        f"{c['runs']} run(s); ratios are medians of the per-run ratios.",
        "",
        "| | one node | three nodes | three / one | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    added = c["added_p50"]
    node_ratio = c["ratio_node"]
    rows = [
        (
            "max deliveries/s (no loss, p99 ≤ 100 ms)",
            fmt(c["single_max"]),
            fmt(c["cross_max"]),
            ratio(c["ratio_total"], 1),
            "",
            "",
        ),
        ("messages/s at max", fmt(c["single_msgs"]), fmt(c["cross_msgs"]), "", "", ""),
        (
            "deliveries/s per receiving node at max",
            fmt(c["single_node"]),
            fmt(c["cross_node"]),
            ratio(node_ratio, 1),
            f"≥ {CROSS_PER_NODE_SHARE:.0%} of one node",
            _met(None if node_ratio is None else node_ratio >= CROSS_PER_NODE_SHARE),
        ),
        (
            "deliveries per server CPU-second at max (all nodes)",
            fmt(c["single_per_cpu"]),
            fmt(c["cross_per_cpu"]),
            ratio(c["ratio_per_cpu"], 1),
            "",
            "",
        ),
        (
            "deliveries per CPU-second of a receiving node at max (three nodes: B and C)",
            fmt(c["single_per_cpu"]),
            fmt(c["recv_per_cpu"]),
            ratio(c["ratio_recv_per_cpu"], 1),
            f"≥ {CROSS_PER_NODE_SHARE:.0%} (per node, CPU-normalized)",
            _met(
                None
                if c["ratio_recv_per_cpu"] is None
                else c["ratio_recv_per_cpu"] >= CROSS_PER_NODE_SHARE
            ),
        ),
        (
            "p50 ms at 20,000 deliveries/s",
            fmt(c["single_p50"], "ms"),
            fmt(c["cross_p50"], "ms"),
            "-" if added is None else f"{added:+.2f} ms",
            f"≤ {CROSS_ADDED_P50_MS:g} ms added",
            _met(None if added is None else added <= CROSS_ADDED_P50_MS),
        ),
        (
            "p99 ms at 20,000 deliveries/s",
            fmt(c["single_p99"], "ms"),
            fmt(c["cross_p99"], "ms"),
            "",
            "",
            "",
        ),
        (
            "server µs CPU per delivery at 20,000/s (all nodes)",
            fmt(c["single_us"], "ms"),
            fmt(c["cross_us"], "ms"),
            ratio(c["cross_us"], c["single_us"]),
            "",
            "",
        ),
        (
            "nodes' CPU at max (sum)",
            fmt(c["single_nodes_cpu"], "ms"),
            fmt(c["cross_nodes_cpu"], "ms"),
            "",
            "",
            "",
        ),
        ("Redis CPU at max", fmt(c["single_redis"], "ms"), fmt(c["cross_redis"], "ms"), "", "", ""),
        (
            "PostgreSQL CPU at max (the database's backends, WAL writer, checkpointer)",
            fmt(c["single_pg"], "ms"),
            fmt(c["cross_pg"], "ms"),
            "",
            "",
            "",
        ),
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += [
        "",
        "Every run (deliveries/s; p50/p99 at 20,000 deliveries/s; CPU at the highest "
        "passing step):",
        "",
        "| run | order | one node max | three nodes max | B, C at max | per node / one node "
        "| p50 ms one / three | p99 ms one / three | A, B, C CPU at max | Redis CPU one / three "
        "| next step (one / three) | RSS MB one / three | log warnings | Redis keys left "
        "| other CPU one / three |",
        "|---:|---|---:|---:|---|---:|---|---|---|---|---|---|---:|---:|---|",
    ]
    for e in every:
        by_node = e["cross_by_node_at_max"]
        cpus = e["cross_node_cpu_at_max"]
        stopped = e["stopped"]
        lines.append(
            f"| {e['run']} | {' then '.join(e['order'] or [])} | {fmt(e['single_max'])} "
            f"| {fmt(e['cross_max'])} | {fmt(by_node.get('B'))}, {fmt(by_node.get('C'))} "
            f"| {ratio(e['ratio_node'], 1)} "
            f"| {fmt(e['single_p50'], 'ms')} / {fmt(e['cross_p50'], 'ms')} "
            f"| {fmt(e['single_p99'], 'ms')} / {fmt(e['cross_p99'], 'ms')} "
            f"| {', '.join(fmt(v, 'ms') for v in cpus.values())} "
            f"| {fmt(e['single_redis'], 'ms')} / {fmt(e['cross_redis'], 'ms')} "
            f"| {fmt(stopped['single'])} / {fmt(stopped['cross'])} "
            f"| {', '.join(fmt1(v) for v in e['single_rss_mb'])} / "
            f"{', '.join(fmt1(v) for v in e['cross_rss_mb'])} "
            f"| {e['log_problems']} | {e['redis_keys_left']} "
            f"| {fmt(e['other_cpu']['single'], 'ms')} / {fmt(e['other_cpu']['cross'], 'ms')} |"
        )
    lines.append("")
    if note:
        lines += [note, ""]
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
