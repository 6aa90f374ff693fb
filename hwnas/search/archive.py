"""Every evaluated subnet of a run, kept in ``archive.parquet``.

The archive is what makes a run resumable and its result readable afterwards: one row per
evaluated candidate (arch, predicted latencies and their uncertainty, params, MACs,
accuracy, feasibility, generation). It is flushed atomically at most every
:data:`FLUSH_SECONDS`, so an interrupted run loses at most that much work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from hwnas.files import atomic_write
from hwnas.search.config import Objective, SearchError
from hwnas.space import Arch, SearchSpace

ARCHIVE_COLUMNS = ("eval", "key", "arch", "name", "feasible", "acc", "source", "generation")
FLUSH_SECONDS = 2.0


class Archive:
    """Every evaluated subnet of a run, one row each, flushed to Parquet atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.acc: dict[str, float] = {}
        self._last_flush = time.perf_counter()
        self._dirty = False
        if path is not None and path.exists():
            if not path.is_file():
                raise SearchError(f"the archive {path} is not a file")
            try:
                df = pd.read_parquet(path)
            except Exception as exc:
                raise SearchError(f"cannot read the archive {path}: {exc}") from None
            for row in df.to_dict("records"):
                if row.get("source") == "oracle" and not pd.isna(row.get("acc")):
                    self.acc[row["key"]] = float(row["acc"])
            self.previous = df
        else:
            self.previous = None

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self._dirty = True
        if time.perf_counter() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def update(self, key: str, values: dict[str, Any]) -> None:
        """Set ``values`` in every row of arch ``key`` (a measurement replacing a
        prediction); written at the next flush."""
        for row in self.rows:
            if row["key"] == key:
                row.update(values)
        self._dirty = True

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=None if self.rows else list(ARCHIVE_COLUMNS))

    def flush(self) -> None:
        """Write the rows; rows of an earlier (resumed) run that this run has not replayed
        yet are kept after them, so an interrupted replay never loses a measured accuracy."""
        self._last_flush = time.perf_counter()
        if self.path is None or not self._dirty:
            return
        df = self.frame()
        if self.previous is not None and len(self.previous):
            rest = self.previous[~self.previous["key"].isin(set(df["key"]))]
            if len(rest):
                df = pd.concat([df, rest], ignore_index=True) if len(df) else rest
        atomic_write(self.path, lambda tmp: df.to_parquet(tmp, index=False))
        self._dirty = False

    def evaluated(self, space: SearchSpace) -> tuple[list[Arch], np.ndarray]:
        """The archs whose accuracy was measured, once each, with their accuracies."""
        df = self.frame()
        df = df[(df["source"] == "oracle") & df["acc"].notna()].drop_duplicates("key")
        return [space.arch(json.loads(a)) for a in df["arch"]], df["acc"].to_numpy(float)


def scored_rows(df: pd.DataFrame, has_acc: bool) -> pd.DataFrame:
    """The archive rows that count: feasible and (with acc) evaluated, one per arch."""
    if df.empty:
        return df
    keep = df["feasible"].astype(bool)
    if has_acc:
        keep &= df["acc"].notna()
    return df[keep].drop_duplicates("key")


def archive_objectives(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """The minimised objective matrix of archive rows (accuracy negated)."""
    if df.empty:  # nothing met the budget: no columns to read
        return np.zeros((0, len(objectives)))
    cols = [-df["acc"].to_numpy(float) if o.kind == "acc" else df[o.name].to_numpy(float)
            for o in objectives]
    return np.column_stack(cols) if cols else np.zeros((len(df), 0))


__all__ = ["ARCHIVE_COLUMNS", "Archive", "FLUSH_SECONDS", "archive_objectives",
           "scored_rows"]
