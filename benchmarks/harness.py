"""The one harness every benchmark runs in: a table on the terminal, a JSON file on disk.

A benchmark module defines ``run(args) -> Result`` and optionally ``add_arguments(parser)``.
The harness stamps the result with the machine fingerprint and the date and writes
``benchmarks/results/<name>-<YYYYMMDD-HHMMSS>.json`` (and ``<name>-latest.json``).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    """A benchmark's measured rows, its headline figures and their targets."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    # name -> (measured value, target, "ge" or "le"); judged and printed by the harness
    targets: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # written to the JSON, not printed (e.g. every seed's run behind a table of means)
    details: dict[str, Any] = field(default_factory=dict)


def judge(targets: dict[str, tuple[float, float, str]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (value, target, sense) in targets.items():
        ok = value >= target if sense == "ge" else value <= target
        out[name] = {"value": value, "target": target, "sense": sense, "met": bool(ok)}
    return out


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def report(name: str, result: Result, seconds: float, out_dir: Path = RESULTS,
           console: Console | None = None) -> Path:
    """Print the table and write the JSON result; returns its path."""
    from hwnas.fingerprint import host_fingerprint

    console = console or Console()
    if result.rows:
        table = Table(title=f"benchmark {name}")
        columns = list(dict.fromkeys(k for row in result.rows for k in row))
        for c in columns:
            table.add_column(c)
        for row in result.rows:
            table.add_row(*[fmt(row.get(c, "")) for c in columns])
        console.print(table)
    for k, v in result.summary.items():
        console.print(f"{k}: {fmt(v)}")
    verdicts = judge(result.targets)
    for k, v in verdicts.items():
        sign = ">=" if v["sense"] == "ge" else "<="
        mark = "[green]met[/green]" if v["met"] else "[red]NOT met[/red]"
        console.print(f"target {k}: {fmt(v['value'])} (want {sign} {fmt(v['target'])}) {mark}")
    for note in result.notes:
        console.print(f"note: {note}")
    now = _dt.datetime.now(_dt.timezone.utc)
    payload = {
        "benchmark": name,
        "date": now.isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "machine": host_fingerprint(),
        "summary": result.summary,
        "targets": verdicts,
        "notes": result.notes,
        "rows": result.rows,
        **({"details": result.details} if result.details else {}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{now:%Y%m%d-%H%M%S}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (out_dir / f"{name}-latest.json").write_text(text)
    console.print(f"wrote {path}")
    return path


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
