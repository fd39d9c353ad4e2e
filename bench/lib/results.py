"""Where a run's results go: ``bench/results/<stamp>.json`` (every raw result,
the summary, the machine, the notes) and ``.md`` (the tables), and its PNGs.

bench/results/ is git-ignored: results belong to the machine that made them;
docs/benchmarks.md quotes each figure with its command and the stamp.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.lib import report
from bench.lib.servers import BENCH, REPO

DEFAULT_OUT = BENCH / "results"
#: Where the PNGs of the latest run go (docs/benchmarks.md links them).
PLOTS_DIR = REPO / "docs" / "img" / "bench"


def stamp() -> str:
    """The name of a run's files: its start time."""
    return time.strftime("%Y%m%d-%H%M%S")


def write(out: Path, name: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``out/name.json`` (first: the tables come from it); return its path."""
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_md(results: Path, md: str) -> None:
    """The tables beside their results JSON (``name.md``)."""
    results.with_suffix(".md").write_text(md)


def rerender(path: Path) -> str:
    """The markdown of a saved results JSON, written again beside it (``--report``)."""
    doc = json.loads(path.read_text())
    targets = list(doc["summary"][next(iter(doc["summary"]))])
    summary = report.summarize(doc["raw"], targets, list(doc["summary"]))
    runs = 1 + max(r["run"] for r in doc["raw"])
    md = report.markdown(summary, targets, list(doc["summary"]), runs, doc.get("notes"))
    path.with_suffix(".md").write_text(md)
    return md


def render_plots(results: Path, out: Path) -> None:
    """PNGs of a results JSON (bench/lib/plots.py); optional: needs matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')", flush=True)
        return
    from bench.lib import plots  # imports matplotlib

    try:
        paths = plots.render(results, out)
    except Exception as exc:  # the results are saved; a plotting bug must not fail the run
        print(f"plots failed ({exc!r}); retry: bench/lib/plots.py {results}", file=sys.stderr)
        return
    for path in paths:
        print(f"plot: {path}")
