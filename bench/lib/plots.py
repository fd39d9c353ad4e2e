"""PNG plots of a bench/run.py results JSON (matplotlib, Agg backend).

One PNG per plot, named by scenario, written to --out (docs/img/bench by
default, where docs/benchmarks.md links them); a plot whose scenario is not in
the JSON is skipped:

- ``fanout100-throughput.png``, ``fanout1000-throughput.png``: delivered vs
  offered deliveries/s, one faint line per run, the median over the runs that
  reached each rate in bold, y = x for reference. The fixed 20,000/s step is
  drawn as the first point; open markers are steps that failed (loss, a
  dropped client, p99 over the bound or the sender falling behind).
- ``fanout100-latency.png``, ``fanout1000-latency.png``: p50 and p99 vs
  offered rate (log y), with the p99 bound.
- ``persist-throughput.png``, ``persist-latency.png``: the same for acked
  msgs/s and ack latency, with the 50 ms bound (``persist-pg-*.png`` for
  the same scenario on PostgreSQL).
- ``crossnode-throughput.png``: delivered vs offered deliveries/s, one node
  vs three nodes (sender on A, receivers on B and C), as the fan-out plots.
- ``crossnode-latency.png``: p50/p90/p99/p99.9 delivery latency at the fixed
  20,000 deliveries/s step, one node vs three nodes (bar: median of runs,
  dots: each run).
- ``scaleout.png``: node A's CPU (seconds per second) against the number
  of nodes, each with a room of its own, per tree (median of runs, every run
  as a dot), and Redis's CPU (dashed); ``scaleout-a-quiet.png`` for a run
  with node A's room quiet (``--scaleout-a-rate 0``).
- ``echo.png``: median round trips/s per target (every run as a dot).
- ``idle.png``: median server RSS per idle connection per target and idle
  scenario (every run as a dot), with the 12 KB target.

    .venv/bin/python bench/lib/plots.py bench/results/<stamp>.json [--out docs/img/bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import report

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "img" / "bench"
SIZE = (8, 5)  # inches, at DPI: 800 x 500 px
DPI = 100
FIXED_COLORS = {"roomcast": "tab:blue", "node": "tab:orange"}
OTHER_COLORS = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
IDLE_SCENARIOS = ["idle", "idle-noroom", "idle50k"]

Step = dict[str, Any]


def color(target: str, targets: list[str]) -> str:
    if target in FIXED_COLORS:
        return FIXED_COLORS[target]
    others = [t for t in targets if t not in FIXED_COLORS]
    return OTHER_COLORS[others.index(target) % len(OTHER_COLORS)]


def thousands(value: float, _pos: object = None) -> str:
    """Axis label for a rate: 250k, 1M, 500."""
    if abs(value) >= 1_000_000:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1_000:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def by_scenario(raw: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """rows[scenario][target] = the results without an error, in run order."""
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in raw:
        if "error" in r:
            continue
        rows.setdefault(r["scenario_name"], {}).setdefault(r["target"], []).append(r)
    return rows


def new_figure() -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI, layout="constrained")
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def fanout_steps(result: dict[str, Any]) -> list[Step]:
    """The fixed step and the ramp/bisection steps of one fan-out run, by rate."""
    steps = [s for s in [result.get("fixed"), *result.get("steps", [])] if s]
    return sorted(steps, key=lambda s: s["target_deliveries_per_s"])


def persist_steps(result: dict[str, Any]) -> list[Step]:
    return sorted(result.get("steps", []), key=lambda s: s["offered_per_s"])


def medians(
    runs: list[list[Step]], x: Callable[[Step], float], y: Callable[[Step], float | None]
) -> tuple[list[float], list[float]]:
    """Per offered rate, the median of y over the runs that reached that rate."""
    cells: dict[float, list[float]] = {}
    for steps in runs:
        for step in steps:
            value = y(step)
            if value is not None:
                cells.setdefault(x(step), []).append(value)
    xs = sorted(cells)
    return xs, [statistics.median(cells[v]) for v in xs]


def draw_runs(
    ax: Axes,
    runs: list[list[Step]],
    x: Callable[[Step], float],
    y: Callable[[Step], float | None],
    colour: str,
    style: str = "-",
) -> None:
    """Each run as a faint line; its failed steps as open markers."""
    for steps in runs:
        pts = [(x(s), y(s), s["ok"]) for s in steps if y(s) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, alpha=0.25, lw=1)
        failed = [p for p in pts if not p[2]]
        ax.plot(
            [p[0] for p in failed],
            [p[1] for p in failed],
            "o",
            mfc="none",
            mec=colour,
            alpha=0.6,
            ms=6,
        )


def failed_handle() -> Line2D:
    return Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", label="failed step (a run)")


def throughput_plot(
    path: Path,
    title: str,
    per_target: dict[str, list[list[Step]]],
    targets: list[str],
    x: Callable[[Step], float],
    y: Callable[[Step], float | None],
    xlabel: str,
    ylabel: str,
    reference: str,
) -> Path:
    fig, ax = new_figure()
    top = 0.0
    for target in targets:
        runs = per_target.get(target)
        if not runs:
            continue
        colour = color(target, targets)
        draw_runs(ax, runs, x, y, colour)
        xs, ys = medians(runs, x, y)
        ax.plot(xs, ys, "-o", color=colour, lw=2.2, ms=4, label=f"{target} (median of runs)")
        top = max([top, *xs])
    ax.plot([0, top], [0, top], ":", color="0.4", lw=1.2, label=f"y = x ({reference})")
    ax.set_xlim(0, top * 1.03)
    ax.set_ylim(0, top * 1.03)
    ax.xaxis.set_major_formatter(FuncFormatter(thousands))
    ax.yaxis.set_major_formatter(FuncFormatter(thousands))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, failed_handle()], loc="upper left", fontsize=9)
    return save(fig, path)


def latency_plot(
    path: Path,
    title: str,
    per_target: dict[str, list[list[Step]]],
    targets: list[str],
    x: Callable[[Step], float],
    bound_ms: float | None,
    xlabel: str,
    ylabel: str,
) -> Path:
    fig, ax = new_figure()
    ax.set_yscale("log")
    for target in targets:
        runs = per_target.get(target)
        if not runs:
            continue
        colour = color(target, targets)
        for key, style, width in (("p99_ms", "-", 2.2), ("p50_ms", "--", 1.6)):

            def y(s: Step, key: str = key) -> float | None:
                value: float | None = s.get(key)
                return value

            draw_runs(ax, runs, x, y, colour, style)
            xs, ys = medians(runs, x, y)
            ax.plot(
                xs,
                ys,
                style,
                marker="o",
                color=colour,
                lw=width,
                ms=4,
                label=f"{target} {key.removesuffix('_ms')} (median)",
            )
    if bound_ms:
        ax.axhline(bound_ms, color="tab:red", ls=":", lw=1.4, label=f"p99 bound {bound_ms:g} ms")
    ax.set_xlim(left=0)
    ax.xaxis.set_major_formatter(FuncFormatter(thousands))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # 20, 30 (not 2×10¹)
    ax.grid(True, which="minor", axis="y", alpha=0.12)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # Below the axes: latency curves can fill any corner.
    handles, _ = ax.get_legend_handles_labels()
    fig.legend(handles=[*handles, failed_handle()], loc="outside lower center", ncol=3, fontsize=9)
    return save(fig, path)


def fanout_plots(
    out: Path, scenario: str, rows: dict[str, list[dict[str, Any]]], targets: list[str]
) -> list[Path]:
    per_target = {t: [fanout_steps(r) for r in rs] for t, rs in rows.items()}
    first = next(r for rs in rows.values() for r in rs)
    n, bound = first["clients"], first.get("bound_ms")
    step_s = first.get("step_seconds")
    nruns = max(len(rs) for rs in rows.values())
    about = f"N={n:,} clients in one room, {step_s:g} s steps, {nruns} runs (faint: each run)"

    def x(s: Step) -> float:
        return float(s["target_deliveries_per_s"])

    def delivered(s: Step) -> float | None:
        value: float | None = s.get("delivered_per_s")
        return value

    return [
        throughput_plot(
            out / f"{scenario}-throughput.png",
            f"{scenario}: delivered vs offered deliveries/s\n{about}",
            per_target,
            targets,
            x,
            delivered,
            "offered deliveries/s (load generator's target: messages/s × N)",
            "delivered deliveries/s",
            "delivered = offered",
        ),
        latency_plot(
            out / f"{scenario}-latency.png",
            f"{scenario}: delivery latency vs offered rate\n{about}",
            per_target,
            targets,
            x,
            bound,
            "offered deliveries/s (messages/s × N)",
            "latency, send to receive (ms, log scale)",
        ),
    ]


def persist_plots(
    out: Path, rows: dict[str, list[dict[str, Any]]], targets: list[str], name: str = "persist"
) -> list[Path]:
    per_target = {t: [persist_steps(r) for r in rs] for t, rs in rows.items()}
    first = next(r for rs in rows.values() for r in rs)
    nruns = max(len(rs) for rs in rows.values())
    about = f"{first['clients']} clients, one room each, {first.get('step_seconds', 0):g} s steps"
    about += f", {nruns} runs (faint: each run)"

    def x(s: Step) -> float:
        return float(s["offered_per_s"])

    def acked(s: Step) -> float | None:
        value: float | None = s.get("acked_per_s")
        return value

    return [
        throughput_plot(
            out / f"{name}-throughput.png",
            f"{name}: acked vs offered msgs/s\n{about}",
            per_target,
            targets,
            x,
            acked,
            "offered msgs/s (all clients together)",
            "acked msgs/s",
            "acked = offered",
        ),
        latency_plot(
            out / f"{name}-latency.png",
            f"{name}: ack latency vs offered rate\n{about}",
            per_target,
            targets,
            x,
            first.get("bound_ms"),
            "offered msgs/s (all clients together)",
            "ack latency, send to ack (ms, log scale)",
        ),
    ]


def bar_labels(ax: Axes, bars: Any, values: list[float], fmt: str) -> None:
    """The median inside each bar, at its foot (clear of the run dots at the top)."""
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            fmt.format(value),
            (bar.get_x() + bar.get_width() / 2, 0),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85},
        )


def run_dots(ax: Axes, centre: float, values: list[float]) -> None:
    ax.plot([centre] * len(values), values, "o", color="black", ms=4, alpha=0.7, zorder=3)


def dots_handle() -> Line2D:
    return Line2D([], [], ls="none", marker="o", color="black", ms=4, alpha=0.7, label="each run")


def echo_plot(out: Path, rows: dict[str, list[dict[str, Any]]], targets: list[str]) -> Path:
    get = report.ECHO_KEYS["max"]
    present = [t for t in targets if rows.get(t)]
    values = {t: [float(get(r)) for r in rows[t]] for t in present}
    meds = [statistics.median(values[t]) for t in present]
    first = rows[present[0]][0]
    fig, ax = new_figure()
    ax.grid(False)
    ax.grid(True, axis="y", alpha=0.3)
    bars = ax.bar(present, meds, width=0.6, color=[color(t, targets) for t in present], alpha=0.85)
    for i, t in enumerate(present):
        run_dots(ax, i, values[t])
    bar_labels(ax, bars, meds, "{:,.0f}")
    ax.set_ylim(0, max(max(v) for v in values.values()) * 1.15)
    ax.yaxis.set_major_formatter(FuncFormatter(thousands))
    ax.set_title(
        "echo: ping/pong round trips/s (bar: median of runs)\n"
        f"{first['clients']} clients, one ping in flight each",
        fontsize=11,
    )
    ax.set_xlabel("target")
    ax.set_ylabel("round trips/s")
    ax.legend(handles=[dots_handle()], loc="upper left", fontsize=9)
    return save(fig, out / "echo.png")


def idle_plot(
    out: Path, rows: dict[str, dict[str, list[dict[str, Any]]]], targets: list[str]
) -> Path:
    get = report.IDLE_KEYS["kb"]
    scenarios = [s for s in IDLE_SCENARIOS if s in rows]
    present = [t for t in targets if any(rows[s].get(t) for s in scenarios)]
    width = 0.8 / len(present)
    fig, ax = new_figure()
    ax.grid(False)
    ax.grid(True, axis="y", alpha=0.3)
    top = float(report.IDLE_TARGET_KB)
    handles: list[Any] = []
    for i, target in enumerate(present):
        xs, meds, runs = [], [], []
        for j, scenario in enumerate(scenarios):
            values = [float(v) for v in map(get, rows[scenario].get(target, [])) if v is not None]
            if not values:
                continue
            xs.append(j + (i - (len(present) - 1) / 2) * width)
            meds.append(statistics.median(values))
            runs.append(values)
            top = max(top, *values)
        bars = ax.bar(
            xs, meds, width=width * 0.92, color=color(target, targets), alpha=0.85, label=target
        )
        handles.append(bars)
        for centre, values in zip(xs, runs, strict=True):
            run_dots(ax, centre, values)
        bar_labels(ax, bars, meds, "{:.1f} KB")
    line = ax.axhline(
        report.IDLE_TARGET_KB,
        color="tab:red",
        ls="--",
        lw=1.4,
        label=f"target: ≤ {report.IDLE_TARGET_KB} KB per connection",
    )
    where = {"idle-noroom": "idle, no room"}
    labels = []
    for scenario in scenarios:
        clients = sorted({r["clients"] for rs in rows[scenario].values() for r in rs})
        n = " / ".join(f"{c:,}" for c in clients)
        labels.append(f"{scenario}\n({n} {where.get(scenario, 'idle in the lobby')})")
    ax.set_xticks(range(len(scenarios)), labels)
    ax.set_ylim(0, top * 1.2)
    ax.set_title(
        "Server RSS per idle WebSocket connection (bar: median of runs)\n"
        "clients connect, read their welcome and stay idle",
        fontsize=11,
    )
    ax.set_ylabel("KB per connection: (RSS after − before) / clients")
    fig.legend(
        handles=[*handles, line, dots_handle()], loc="outside lower center", ncol=4, fontsize=9
    )
    return save(fig, out / "idle.png")


CROSS_VARIANTS = {"single": "one node (all on A)", "cross": "three nodes (A → B, C)"}
CROSS_PERCENTILES = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]


def crossnode_plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Throughput vs offered rate and the fixed step's latency percentiles, 1 vs 3 nodes."""
    labels = list(CROSS_VARIANTS.values())
    per_variant = {
        label: [fanout_steps(r["variants"][key]) for r in rows]
        for key, label in CROSS_VARIANTS.items()
    }
    first = rows[0]["variants"]["cross"]
    about = (
        f"1 sender + {rows[0]['receivers']:,} receivers in one room, "
        f"{first.get('step_seconds', 0):g} s steps, {len(rows)} runs (faint: each run)\n"
        "PostgreSQL + Redis in both; all nodes share CPU 0"
    )

    def x(s: Step) -> float:
        return float(s["target_deliveries_per_s"])

    def delivered(s: Step) -> float | None:
        value: float | None = s.get("delivered_per_s")
        return value

    paths = [
        throughput_plot(
            out / "crossnode-throughput.png",
            f"crossnode: delivered vs offered deliveries/s\n{about}",
            per_variant,
            labels,
            x,
            delivered,
            "offered deliveries/s (messages/s × clients)",
            "delivered deliveries/s",
            "delivered = offered",
        )
    ]
    fig, ax = new_figure()
    ax.grid(False)
    ax.grid(True, axis="y", alpha=0.3)
    width = 0.8 / len(labels)
    handles: list[Any] = []
    top = 0.0
    for i, (key, label) in enumerate(CROSS_VARIANTS.items()):
        xs, meds, runs = [], [], []
        for j, (field, _) in enumerate(CROSS_PERCENTILES):
            values = [float(r["variants"][key]["fixed"][field]) for r in rows]
            xs.append(j + (i - (len(labels) - 1) / 2) * width)
            meds.append(statistics.median(values))
            runs.append(values)
            top = max(top, *values)
        bars = ax.bar(xs, meds, width=width * 0.92, color=color(label, labels), alpha=0.85)
        bars.set_label(label)
        handles.append(bars)
        for centre, values in zip(xs, runs, strict=True):
            run_dots(ax, centre, values)
        bar_labels(ax, bars, meds, "{:.1f}")
    rate = rows[0]["variants"]["cross"]["fixed"]["target_deliveries_per_s"]
    ax.set_xticks(range(len(CROSS_PERCENTILES)), [name for _, name in CROSS_PERCENTILES])
    ax.set_ylim(0, top * 1.15)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_title(
        f"crossnode: delivery latency at {rate:,} deliveries/s (bar: median of runs)\n{about}",
        fontsize=10,
    )
    ax.set_xlabel("percentile of send → receive latency")
    ax.set_ylabel("ms")
    fig.legend(handles=[*handles, dots_handle()], loc="outside lower center", ncol=3, fontsize=9)
    paths.append(save(fig, out / "crossnode-latency.png"))
    return paths


def scaleout_plot(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Node A's CPU and Redis's as the nodes grow, one line per tree."""
    points = report.scaleout_points(rows)
    trees = list(points)
    fig, ax = new_figure()
    for tree in trees:
        colour = color(tree, trees)
        counts = sorted(points[tree])
        a_runs = {
            n: [v for p in points[tree][n] if (v := report.window_cpu(p, "A")) is not None]
            for n in counts
        }
        redis = [
            statistics.median(vs)
            if (vs := [v for p in points[tree][n] if (v := report.window_cpu(p, "redis"))])
            else float("nan")
            for n in counts
        ]
        ax.plot(
            counts,
            [statistics.median(a_runs[n]) if a_runs[n] else float("nan") for n in counts],
            "-o",
            color=colour,
            lw=2,
            label=f"node A: {tree}",
        )
        for n in counts:
            ax.plot([n] * len(a_runs[n]), a_runs[n], ".", color=colour, alpha=0.5, ms=6)
        ax.plot(counts, redis, "--", color=colour, alpha=0.8, label=f"Redis: {tree}")
    first = rows[0]
    a_rate = first.get("a_room_rate", first["room_rate"])
    ax.set_xlabel("nodes, each with a room of its own (node A's own load stays the same)")
    ax.set_ylabel("CPU, seconds per second")
    ax.set_ylim(bottom=0)
    ax.set_xticks(sorted({n for by_nodes in points.values() for n in by_nodes}))
    ax.set_title(
        f"scaleout: node A's CPU as the other nodes' traffic grows\n"
        f"each room: 1 sender at {first['room_rate']:g} msgs/s (node A's: {a_rate:g}) + "
        f"{first['clients_per_room'] - 1} receivers on its node; {len(rows)} run(s) "
        "(dots: each run)\nnode A alone on CPU 0, the other nodes on CPU 1",
        fontsize=10,
    )
    ax.legend(fontsize=9)
    return save(fig, out / ("scaleout-a-quiet.png" if not a_rate else "scaleout.png"))


def render(results_json_path: Path | str, out_dir: Path | str) -> list[Path]:
    """Write the PNGs for the scenarios in a run.py results JSON; return their paths."""
    doc = json.loads(Path(results_json_path).read_text())
    raw: list[dict[str, Any]] = doc.get("raw", [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = by_scenario(raw)
    targets = list(dict.fromkeys(r["target"] for r in raw))
    paths: list[Path] = []
    for scenario in ("fanout100", "fanout1000"):
        if scenario in rows:
            paths += fanout_plots(out, scenario, rows[scenario], targets)
    for scenario in ("persist", "persist-pg"):
        if scenario in rows:
            paths += persist_plots(out, rows[scenario], targets, scenario)
    if "crossnode" in rows:
        paths += crossnode_plots(out, rows["crossnode"]["roomcast"])
    if "scaleout" in rows and "roomcast" in rows["scaleout"]:
        paths.append(scaleout_plot(out, rows["scaleout"]["roomcast"]))
    if "echo" in rows:
        paths.append(echo_plot(out, rows["echo"], targets))
    if any(s in rows for s in IDLE_SCENARIOS):
        paths.append(idle_plot(out, rows, targets))
    return paths


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="a bench/results/<stamp>.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    opts = parser.parse_args(argv)
    paths = render(opts.results, opts.out)
    if not paths:
        print(f"{opts.results}: no scenario to plot", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
