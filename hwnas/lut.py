"""Lookup tables: measured op latencies (``lut/<device>.parquet``) and end-to-end subnet
latencies (``lut/<device>.subnets.parquet``).

Parquet with the schema version, the device fingerprint, the device and the search space
in the file's metadata (CSV is accepted for reading, with an optional ``.meta.json``
sidecar). Writes are atomic (temporary file, fsync, rename), so a reader or a killed
writer never sees half a table. Loading checks the schema, the columns, the values and,
when asked, the fingerprint, and names the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hwnas.errors import LutError
from hwnas.files import atomic_write
from hwnas.ops import OpSpec, encode_batch, ops, sum_over_archs, tabulate
from hwnas.space import Arch, SearchSpace

SCHEMA_VERSION = 1
META_KEY = b"hwnas"
STAT_COLUMNS = ["latency_ms", "p10_ms", "p90_ms", "spread", "count", "attempts"]
OP_COLUMNS = ["key", "kind", "hw", "cin", "cout", "mid", "expand", "kernel", "stride", "act",
              "se_mid", "residual"]
SUBNET_COLUMNS = ["key", "arch", "name", "r", "macs", "params"]
KINDS = {"ops": OP_COLUMNS, "subnets": SUBNET_COLUMNS}


def table_paths(device_name: str, out_dir: str | Path = "lut") -> tuple[Path, Path]:
    """(op table, subnet table) of a device."""
    out = Path(out_dir)
    return out / f"{device_name}.parquet", out / f"{device_name}.subnets.parquet"


def write_table(df: pd.DataFrame, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``df`` with ``meta`` to Parquet atomically (never a half-written file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    md = dict(table.schema.metadata or {})
    md[META_KEY] = json.dumps({"schema_version": SCHEMA_VERSION, **meta}, default=str).encode()
    table = table.replace_schema_metadata(md)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def table_statistic(meta: Mapping[str, Any]) -> str:
    """Which statistic of its timed calls a table's ``latency_ms`` holds (median before
    device protocols could say)."""
    return (meta.get("protocol") or {}).get("statistic", "median")


def restate(path: str | Path, kind: str, statistic: str) -> bool:
    """Rewrite a table of medians as the ``p10`` of the same timed calls (every row keeps
    its p10, p90 and spread), for a device whose protocol now measures the p10: the one
    change of statistic a table's columns allow. Returns False when it already holds
    ``statistic``."""
    path = Path(path)
    df, meta = read_table(path, kind)
    have = table_statistic(meta)
    if have == statistic:
        return False
    if (have, statistic) != ("median", "p10"):
        raise LutError(f"{path} holds the {have} of its timed calls, asked for the "
                       f"{statistic}: only a table of medians can be restated, and only as the "
                       f"p10 its rows also record (allowed: p10)")
    df = df.copy()
    df["latency_ms"] = df["p10_ms"]
    if "statistic" in df.columns:
        df["statistic"] = df["statistic"].astype(str).str.replace(r"^median", "p10", regex=True)
    meta["protocol"] = {**(meta.get("protocol") or {}), "statistic": statistic}
    meta["restated"] = {"from": have, "to": statistic, "at": pd.Timestamp.now(tz="UTC"),
                        "how": "latency_ms set to the p10_ms of the same timed calls"}
    meta.pop("schema_version", None)
    write_table(df, path, meta)
    return True


def read_table(path: str | Path, kind: str = "ops",
               fingerprint: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, dict]:
    """Read and check a table. ``kind``: ``ops`` or ``subnets``. With ``fingerprint``, a
    table measured elsewhere is refused with what differs."""
    from hwnas.devices import fingerprint_diff

    path = Path(path)
    if kind not in KINDS:
        raise LutError(f"unknown table kind {kind!r}; allowed: {sorted(KINDS)}")
    if not path.exists():
        raise LutError(f"{path}: no such lookup table (run 'hwnas profile' first)")
    meta: dict[str, Any] = {}
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            side = path.with_suffix(".meta.json")
            if side.exists():
                meta = json.loads(side.read_text())
            else:
                meta = {"schema_version": SCHEMA_VERSION}
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            raw = (table.schema.metadata or {}).get(META_KEY)
            if raw is None:
                raise LutError(f"{path}: not an hwnas table (no 'hwnas' metadata)")
            meta = json.loads(raw)
            df = table.to_pandas()
    except LutError:
        raise
    except Exception as exc:  # pyarrow/pandas raise many types on corrupt files
        raise LutError(f"{path}: cannot be read as a table: {exc}") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise LutError(f"{path}: schema version {version!r}, this hwnas reads version "
                       f"{SCHEMA_VERSION}")
    missing = [c for c in KINDS[kind] + STAT_COLUMNS if c not in df.columns]
    if missing:
        raise LutError(f"{path}: missing column(s) {missing}")
    lat = df["latency_ms"]
    if lat.isna().any() or not np.isfinite(lat.to_numpy(dtype=float)).all():
        bad = df.loc[~np.isfinite(lat.to_numpy(dtype=float)), "key"].tolist()[:3]
        raise LutError(f"{path}: latency is NaN or infinite for {bad}")
    if (lat <= 0).any():
        bad = df.loc[lat <= 0, "key"].tolist()[:3]
        raise LutError(f"{path}: latency is zero or negative for {bad}")
    ident = ["key", "r"] if "r" in df.columns else ["key"]
    dup = df.loc[df.duplicated(ident), "key"].tolist()
    if dup:
        raise LutError(f"{path}: key(s) appear more than once: {dup[:3]}")
    if fingerprint is not None and meta.get("fingerprint") is not None:
        diff = fingerprint_diff(meta["fingerprint"], fingerprint)
        if diff:
            raise LutError(f"{path} was measured on another device/runtime: " + "; ".join(diff))
    return df, meta


@dataclass
class LatencyTable:
    """Measured op latencies of one device; predicts a subnet as the sum of its ops."""

    rows: pd.DataFrame
    space: SearchSpace
    fingerprint: dict[str, Any]
    path: Path | None = None
    probes: dict[str, Any] | None = None   # calibration probe timings (hwnas.probe)
    statistic: str = "median"               # of its timed calls each row holds

    @property
    def batch(self) -> int:
        """Images per inference the table was timed at (1 for tables older than batch)."""
        return int(self.fingerprint.get("batch", 1))

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None,
             fingerprint: Mapping[str, Any] | None = None) -> "LatencyTable":
        df, meta = read_table(path, "ops", fingerprint)
        table_space = SearchSpace.from_dict(meta["space"]) if "space" in meta else None
        if space is None:
            if table_space is None:
                raise LutError(f"{path}: the table does not say its search space; pass space=")
            space = table_space
        elif table_space is not None and table_space.id != space.id:
            raise LutError(f"{path} was measured for search space {table_space.name!r} "
                           f"(id {table_space.id}), not {space.name!r} (id {space.id})")
        return cls(df, space, dict(meta.get("fingerprint") or {}), Path(path),
                   meta.get("probes"), table_statistic(meta))

    def __post_init__(self) -> None:
        # An optional column ``r`` ties a row to the network input size it was timed in
        # (tables timed per resolution, as Once-for-All's are); 0 or absent: any size.
        r = self.rows["r"].fillna(0).astype(int) if "r" in self.rows.columns else \
            pd.Series(0, index=self.rows.index)
        self._latency = {(int(ri), k): float(v) for ri, k, v in
                         zip(r, self.rows["key"], self.rows["latency_ms"])}
        self._tables: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _lookup(self, op: OpSpec, r: int | None) -> float | None:
        if r is not None and (r, op.key) in self._latency:
            return self._latency[(r, op.key)]
        return self._latency.get((0, op.key))

    def op_latency(self, op: OpSpec, r: int | None = None) -> float:
        """An op's latency (ms); ``r``: the input size of the network it is part of."""
        value = self._lookup(op, r)
        if value is None:
            where = f" {self.path}" if self.path else ""
            at = f" (at {r} px)" if r is not None else ""
            raise LutError(f"op {op.key}{at} is not in the lookup table{where}; profile the "
                           f"resolutions that contain it with 'hwnas profile'")
        return value

    def _tabulated(self) -> tuple[np.ndarray, np.ndarray]:
        """Latency per block position and fixed latency per resolution (NaN: not in the
        table), for the vectorised sums."""
        if self._tables is None:
            def latency(op: OpSpec, r: int) -> float:
                value = self._lookup(op, r)
                return np.nan if value is None else value

            self._tables = tabulate(self.space, latency, by_resolution=True)
        return self._tables

    def predict(self, archs: Arch | Sequence[Arch] | np.ndarray) -> np.ndarray | float:
        """Sum of op latencies (ms) for one arch (a float) or a batch (an array),
        vectorised over the batch. An op missing from the table is an error naming it."""
        single = isinstance(archs, Arch)
        X = encode_batch([archs] if single else archs, self.space)
        blocks, fixed = self._tabulated()
        out = sum_over_archs(X, self.space, blocks, fixed)
        bad = np.flatnonzero(np.isnan(out))
        if bad.size:
            arch = self.space.decode(X[bad[0]])
            for op in ops(arch, self.space):
                self.op_latency(op, arch.r)  # raises, naming the first missing op
        return float(out[0]) if single else out

    def breakdown(self, arch: Arch) -> pd.DataFrame:
        """One row per op of ``arch`` with its latency (for reports)."""
        rows = [{**op.row(), "latency_ms": self.op_latency(op, arch.r)}
                for op in ops(arch, self.space)]
        return pd.DataFrame(rows)
