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
    if scenario in ("scaleout", "crossnode-latency"):
        return {}  # their figures are per set-up: summarize() keeps them whole
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
    if result.get("scenario") == "scaleout":
        return {**out, **scaleout_brief(result)}
    if result.get("scenario") == "crossnode-latency":
        return {**out, **latency_brief(result)}
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
            if scenario == "scaleout":
                cell["curve"] = scaleout_curve(rows)
                cell["every"] = [scaleout_run(r) for r in rows]
            if scenario == "crossnode-latency":
                cell["latency"] = latency_medians(rows)
                cell["every"] = [latency_run(r) for r in rows]
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
        if scenario == "scaleout":
            lines += scaleout_tables(cells, (notes or {}).get(scenario))
            continue
        if scenario == "crossnode-latency":
            lines += latency_tables(cells, (notes or {}).get(scenario))
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


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def window_cpu(point: dict[str, Any], name: str) -> float | None:
    """A process's CPU over the measured window of a scaleout point."""
    value: float | None = (point.get("cpu_by_process") or {}).get(name)
    return value


def window_io(point: dict[str, Any], name: str, key: str) -> float | None:
    """A process's system-call I/O per second over a scaleout window (rchar, wchar, syscr)."""
    value: float | None = ((point.get("io_per_s_by_process") or {}).get(name) or {}).get(key)
    return value


def _kb(value: float | None) -> float | None:
    return None if value is None else value / 1024


def _others_cpu(point: dict[str, Any]) -> float | None:
    """The mean CPU of the nodes other than A over the window (None with one node)."""
    names = list(point.get("node_urls", {}))[1:]
    values = [window_cpu(point, n) for n in names]
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _room_a(point: dict[str, Any]) -> dict[str, Any]:
    rooms: list[dict[str, Any]] = point.get("rooms") or [{}]
    return rooms[0]


def scaleout_points(rows: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """points[tree][nodes] = the measured points (no error) of every run."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in rows:
        for point in r["points"]:
            if "error" not in point:
                out.setdefault(point["target"], {}).setdefault(point["nodes"], []).append(point)
    return out


def scaleout_curve(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """curve[tree][nodes] = medians over the runs: node A's CPU and deliveries/s, the
    other nodes', Redis's and PostgreSQL's CPU, losses."""
    curve: dict[str, dict[int, dict[str, Any]]] = {}
    for tree, by_nodes in scaleout_points(rows).items():
        for nodes, points in sorted(by_nodes.items()):
            curve.setdefault(tree, {})[nodes] = {
                "runs": len(points),
                "a_cpu": _median([window_cpu(p, "A") for p in points]),
                "a_delivered": _median([_room_a(p).get("delivered_per_s") for p in points]),
                "a_p50": _median([_room_a(p).get("p50_ms") for p in points]),
                "a_p99": _median([_room_a(p).get("p99_ms") for p in points]),
                "others_cpu": _median([_others_cpu(p) for p in points]),
                "a_read_kb": _median([_kb(window_io(p, "A", "rchar")) for p in points]),
                "a_reads": _median([window_io(p, "A", "syscr") for p in points]),
                "redis_write_kb": _median([_kb(window_io(p, "redis", "wchar")) for p in points]),
                "nodes_cpu": _median([window_cpu(p, "nodes") for p in points]),
                "redis_cpu": _median([window_cpu(p, "redis") for p in points]),
                "postgres_cpu": _median([window_cpu(p, "postgres") for p in points]),
                "delivered": _median([p.get("delivered_per_s") for p in points]),
                "msgs": _median([p.get("msgs_per_s") for p in points]),
                "lost": sum(p.get("lost") or 0 for p in points),
            }
    return curve


def scaleout_run(r: dict[str, Any]) -> dict[str, Any]:
    """One scaleout run's points, as the every-run table shows them."""
    points = []
    for point in r["points"]:
        if "error" in point:
            points.append({"tree": point["target"], "nodes": point["nodes"], "error": True})
            continue
        names = list(point.get("node_urls", {}))
        points.append(
            {
                "tree": point["target"],
                "nodes": point["nodes"],
                "node_cpu": [window_cpu(point, n) for n in names],
                "redis_cpu": window_cpu(point, "redis"),
                "postgres_cpu": window_cpu(point, "postgres"),
                "a_read_kb": _kb(window_io(point, "A", "rchar")),
                "redis_write_kb": _kb(window_io(point, "redis", "wchar")),
                "delivered": point.get("delivered_per_s"),
                "lost": point.get("lost"),
                "a_p50": _room_a(point).get("p50_ms"),
                "a_p99": _room_a(point).get("p99_ms"),
                "log_problems": sum(
                    v.get("count", 0) for v in (point.get("log_problems") or {}).values()
                ),
                "redis_keys_left": point.get("redis_keys_left"),
                "other_cpu": point.get("other_cpu"),
            }
        )
    return {
        "run": r.get("run"),
        "order": r.get("order"),
        "room_rate": r.get("room_rate"),
        "a_room_rate": r.get("a_room_rate", r.get("room_rate")),
        "points": points,
    }


def scaleout_brief(r: dict[str, Any]) -> dict[str, Any]:
    """Progress line: node A's CPU at each N, per tree."""
    out: dict[str, Any] = {}
    for point in r["points"]:
        key = f"A_cpu_{point['target']}"
        value = "error" if "error" in point else window_cpu(point, "A")
        out.setdefault(key, {})[point["nodes"]] = value
    return out


def scaleout_tables(cells: dict[str, dict[str, Any]], note: str | None) -> list[str]:
    """scaleout: node A's CPU as the nodes grow, per tree (medians), then every run."""
    lines = ["### scaleout", ""]
    c = cells.get("roomcast")
    if not c or not c["runs"]:
        errors = c["errors"] if c else 0
        return [*lines, note or f"No result ({errors} error(s)).", ""]
    curve: dict[str, dict[int, dict[str, Any]]] = c["curve"]
    trees = list(curve)
    counts = sorted({n for by_nodes in curve.values() for n in by_nodes})
    first = c["every"][0]
    lines += [
        "Each node has a room of its own, its sender and receivers all connected to it "
        f"(no delivery crosses nodes), {first['room_rate']:g} messages/s a room (node A's: "
        f"{first['a_room_rate']:g}); CPU in seconds per second and system-call reads and "
        "writes per second over the window, from /proc; node A alone on CPU 0, the other "
        f"nodes on CPU 1. Medians of {c['runs']} run(s). Trees: " + ", ".join(trees) + ".",
        "",
    ]
    figures = [
        ("node A CPU", "a_cpu", "ms"),
        ("node A deliveries/s", "a_delivered", ""),
        ("node A reads KB/s", "a_read_kb", ""),
        ("node A read calls/s", "a_reads", ""),
        ("other nodes' CPU (mean)", "others_cpu", "ms"),
        ("Redis writes KB/s", "redis_write_kb", ""),
        ("Redis CPU", "redis_cpu", "ms"),
        ("PostgreSQL CPU", "postgres_cpu", "ms"),
        ("lost", "lost", ""),
    ]
    head = ["nodes"] + [f"{name}: {tree}" for name, _, _ in figures for tree in trees]
    lines += [f"| {' | '.join(head)} |", "|---:" * len(head) + "|"]
    for n in counts:
        row = [str(n)]
        for _, key, unit in figures:
            for tree in trees:
                row.append(fmt(curve.get(tree, {}).get(n, {}).get(key), unit))
        lines.append(f"| {' | '.join(row)} |")
    lines += [
        "",
        "Every run (CPU over the window; node A first):",
        "",
        "| run | tree | nodes | each node's CPU | Redis CPU | PostgreSQL CPU | node A reads KB/s "
        "| Redis writes KB/s | deliveries/s | lost | node A p50 / p99 ms | log warnings "
        "| Redis keys left | other CPU |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for e in c["every"]:
        for p in e["points"]:
            if p.get("error"):
                lines.append(f"| {e['run']} | {p['tree']} | {p['nodes']} | error |||||||||||")
                continue
            lines.append(
                f"| {e['run']} | {p['tree']} | {p['nodes']} "
                f"| {', '.join(fmt(v, 'ms') for v in p['node_cpu'])} "
                f"| {fmt(p['redis_cpu'], 'ms')} | {fmt(p['postgres_cpu'], 'ms')} "
                f"| {fmt(p['a_read_kb'])} | {fmt(p['redis_write_kb'])} "
                f"| {fmt(p['delivered'])} | {fmt(p['lost'])} "
                f"| {fmt(p['a_p50'], 'ms')} / {fmt(p['a_p99'], 'ms')} "
                f"| {p['log_problems']} | {fmt(p['redis_keys_left'])} "
                f"| {fmt(p['other_cpu'], 'ms')} |"
            )
    lines.append("")
    if note:
        lines += [note, ""]
    return lines


LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms")


def latency_medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """medians[tree][single|cross]: the fixed step's percentiles, CPU per delivery, and
    the p50 crossing nodes added (the median of the per-run differences)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    trees = list(dict.fromkeys(t for r in rows for t in r["variants"]))
    for tree in trees:
        for name in ("single", "cross"):
            variants = [
                r["variants"][tree][name]
                for r in rows
                if name in r["variants"].get(tree, {}) and "error" not in r["variants"][tree][name]
            ]
            steps = [v["fixed"] for v in variants]
            cell: dict[str, Any] = {"runs": len(steps)}
            for key in LATENCY_FIELDS:
                cell[key] = _median([s.get(key) for s in steps])
            cell["us_per_delivery"] = _median([_us_per_delivery(s) for s in steps])
            cell["redis_cpu"] = _median([_cpu(s, "redis") for s in steps])
            cell["lost"] = sum(s.get("lost") or 0 for s in steps)
            out.setdefault(tree, {})[name] = cell
        added = []
        for r in rows:
            pair = r["variants"].get(tree, {})
            if all(k in pair and "error" not in pair[k] for k in ("single", "cross")):
                added.append(
                    _diff(pair["cross"]["fixed"]["p50_ms"], pair["single"]["fixed"]["p50_ms"])
                )
        out[tree]["added_p50"] = {"median": _median(added)}
    return out


def latency_run(r: dict[str, Any]) -> dict[str, Any]:
    """One crossnode-latency run: each set-up's p50/p99 and losses."""
    out: dict[str, Any] = {"run": r.get("run"), "order": r.get("order"), "trees": {}}
    for tree, pair in r["variants"].items():
        out["trees"][tree] = {
            name: (
                {"error": True}
                if "error" in v
                else {k: v["fixed"].get(k) for k in (*LATENCY_FIELDS, "lost")}
            )
            for name, v in pair.items()
        }
    return out


def latency_brief(r: dict[str, Any]) -> dict[str, Any]:
    """Progress line: p50/p99 of each set-up."""
    out: dict[str, Any] = {}
    for tree, pair in r["variants"].items():
        for name, v in pair.items():
            out[f"{tree}_{name}"] = (
                "error" if "error" in v else [v["fixed"]["p50_ms"], v["fixed"]["p99_ms"]]
            )
    return out


def latency_tables(cells: dict[str, dict[str, Any]], note: str | None) -> list[str]:
    """crossnode-latency: p50/p99 at the fixed rate, one node vs three, per tree."""
    lines = ["### crossnode-latency", ""]
    c = cells.get("roomcast")
    if not c or not c["runs"]:
        errors = c["errors"] if c else 0
        return [*lines, note or f"No result ({errors} error(s)).", ""]
    lines += [
        "The fixed step only: one sender and its receivers in one room; one node = every "
        "client on A, three nodes = the sender on A, the receivers split between B and C. "
        f"PostgreSQL and Redis in both. Medians of {c['runs']} run(s).",
        "",
        "| tree | set-up | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 (three - one) "
        "| server µs CPU per delivery | Redis CPU | lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tree, cellset in c["latency"].items():
        for name, label in (("single", "one node"), ("cross", "three nodes")):
            m = cellset.get(name) or {}
            added = cellset["added_p50"]["median"] if name == "cross" else None
            lines.append(
                f"| {tree} | {label} | {fmt(m.get('p50_ms'), 'ms')} | {fmt(m.get('p90_ms'), 'ms')} "
                f"| {fmt(m.get('p99_ms'), 'ms')} | {fmt(m.get('p999_ms'), 'ms')} "
                f"| {'' if name == 'single' else ('-' if added is None else f'{added:+.2f}')} "
                f"| {fmt(m.get('us_per_delivery'), 'ms')} | {fmt(m.get('redis_cpu'), 'ms')} "
                f"| {fmt(m.get('lost'))} |"
            )
    lines += [
        "",
        "Every run (p50 / p99 ms):",
        "",
        "| run | order | tree | one node | three nodes |",
        "|---:|---|---|---|---|",
    ]
    for e in c["every"]:
        for tree, pair in e["trees"].items():
            cols = []
            for name in ("single", "cross"):
                v = pair.get(name) or {"error": True}
                cols.append(
                    "error"
                    if v.get("error")
                    else f"{fmt(v['p50_ms'], 'ms')} / {fmt(v['p99_ms'], 'ms')}"
                    + (f" ({v['lost']} lost)" if v.get("lost") else "")
                )
            lines.append(
                f"| {e['run']} | {', '.join(e['order'] or [])} | {tree} | {cols[0]} | {cols[1]} |"
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
