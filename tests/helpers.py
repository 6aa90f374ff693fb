"""Shared test helpers (importable from test modules: pytest puts tests/ on sys.path)."""

import numpy as np
import pandas as pd

from hwnas.lut import LatencyTable, write_table
from hwnas.ops import unique_ops


def synthetic_table(path, space, fingerprint, scale=1.0, seed=0) -> LatencyTable:
    """A LUT with a random latency per op of ``space``, written to ``path`` (Parquet),
    holding the statistic the device its file is named after measures (a shipped device's
    predictions are refused from a table of another)."""
    from pathlib import Path

    from hwnas.devices import load_device
    from hwnas.errors import DeviceError

    try:
        statistic = load_device(Path(path).stem).protocol.statistic
    except DeviceError:
        statistic = "median"
    rng = np.random.default_rng(seed)
    rows = []
    for op in unique_ops(space):
        lat = float(rng.uniform(0.01, 0.2)) * scale
        rows.append({**op.row(), "latency_ms": lat, "p10_ms": lat, "p90_ms": lat, "spread": 0.0,
                     "count": 10, "attempts": 1})
    written = write_table(pd.DataFrame(rows), path,
                          {"fingerprint": fingerprint, "space": space.to_dict(),
                           "protocol": {"statistic": statistic}})
    return LatencyTable.load(written)


def export_case(arch: dict, out: str, space: str = "small") -> dict:
    """Export one arch (of the small space by default) to ONNX and TFLite (runs in a worker
    process)."""
    import torch

    from hwnas.export import export

    torch.set_num_threads(1)
    return export(arch, out, ["onnx", "tflite"], space=space, progress=False).manifest
