import json

import numpy as np
import pandas as pd
import pytest

from hwnas.errors import LutError
from hwnas.lut import SCHEMA_VERSION, LatencyTable, read_table, write_table
from hwnas.ops import ops, unique_ops

FP = {"device": "t", "cpu": "x", "threads": 1, "runtime": "onnxruntime"}


def make_table(space, resolutions=None, rng=None):
    rng = rng or np.random.default_rng(0)
    rows = []
    for op in unique_ops(space, resolutions):
        lat = float(rng.uniform(0.01, 1.0))
        rows.append({**op.row(), "latency_ms": lat, "p10_ms": lat * 0.9, "p90_ms": lat * 1.1,
                     "spread": 0.2, "count": 125, "attempts": 1})
    return pd.DataFrame(rows)


def test_round_trip_keeps_rows_and_metadata(tmp_path, small):
    df = make_table(small, [32])
    path = write_table(df, tmp_path / "d.parquet", {"fingerprint": FP, "space": small.to_dict()})
    back, meta = read_table(path, "ops", FP)
    pd.testing.assert_frame_equal(back, df)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["fingerprint"] == FP
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def _write(tmp_path, df, meta=None, name="d.parquet"):
    return write_table(df, tmp_path / name, meta if meta is not None else {"fingerprint": FP})


@pytest.mark.parametrize("mutate, words", [
    (lambda df: df.drop(columns=["latency_ms"]), ["missing column", "latency_ms"]),
    (lambda df: df.assign(latency_ms=np.nan), ["NaN"]),
    (lambda df: df.assign(latency_ms=-1.0), ["negative"]),
    (lambda df: pd.concat([df, df.iloc[:1]]), ["more than once"]),
])
def test_bad_tables_name_file_and_problem(tmp_path, small, mutate, words):
    path = _write(tmp_path, mutate(make_table(small, [32])))
    with pytest.raises(LutError) as info:
        read_table(path)
    assert str(path) in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_wrong_schema_and_foreign_files(tmp_path, small):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = make_table(small, [32])
    t = pa.Table.from_pandas(df).replace_schema_metadata(
        {b"hwnas": json.dumps({"schema_version": 99}).encode()})
    pq.write_table(t, tmp_path / "v99.parquet")
    with pytest.raises(LutError, match="schema version 99"):
        read_table(tmp_path / "v99.parquet")
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "plain.parquet")
    with pytest.raises(LutError, match="not an hwnas table"):
        read_table(tmp_path / "plain.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(LutError, match="cannot be read"):
        read_table(tmp_path / "junk.parquet")
    with pytest.raises(LutError, match="no such lookup table"):
        read_table(tmp_path / "none.parquet")


def test_other_fingerprint_is_refused_naming_the_difference(tmp_path, small):
    path = _write(tmp_path, make_table(small, [32]))
    with pytest.raises(LutError, match="another device.*threads: 1 vs 4"):
        read_table(path, "ops", {**FP, "threads": 4})


def test_csv_is_accepted_for_reading(tmp_path, small):
    df = make_table(small, [32])
    df.to_csv(tmp_path / "d.csv", index=False)
    back, _ = read_table(tmp_path / "d.csv")
    assert len(back) == len(df)


def test_predict_sums_op_rows_vectorised(tmp_path, small):
    df = make_table(small)
    path = _write(tmp_path, df, {"fingerprint": FP, "space": small.to_dict()})
    table = LatencyTable.load(path)
    lat = dict(zip(df["key"], df["latency_ms"]))
    archs = small.sample(300, seed=1) + [small.smallest(), small.largest()]
    batch = table.predict(archs)
    loop = [sum(lat[o.key] for o in ops(a, small)) for a in archs]
    assert np.allclose(batch, loop, rtol=1e-12)
    assert table.predict(archs[0]) == pytest.approx(loop[0])
    X = np.stack([small.encode(a) for a in archs])
    assert np.allclose(table.predict(X), loop)
    bd = table.breakdown(archs[0])
    assert bd["latency_ms"].sum() == pytest.approx(loop[0])


def test_missing_op_is_named(tmp_path, small):
    path = _write(tmp_path, make_table(small, [32]), {"fingerprint": FP, "space": small.to_dict()})
    table = LatencyTable.load(path)
    arch = small.sample(1, seed=0)[0]
    arch = small.arch(r=40, d=arch.d, k=arch.k, e=arch.e)
    with pytest.raises(LutError, match=r"op stem:40x3-0-8:.* is not in the lookup table"):
        table.predict([small.smallest(), arch])


def test_space_mismatch_is_refused(tmp_path, small, default):
    path = _write(tmp_path, make_table(small, [32]), {"fingerprint": FP, "space": small.to_dict()})
    with pytest.raises(LutError, match="search space 'small'"):
        LatencyTable.load(path, space=default)


def test_rows_timed_per_resolution_serve_their_resolution(tmp_path, small):
    """Tables timed per input size (Once-for-All's) hold one op once per resolution; a
    row without ``r`` serves every resolution."""
    rows = []
    for r_i, r in enumerate(small.resolutions):
        for op in unique_ops(small, [r]):
            rows.append({**op.row(), "latency_ms": 1.0 + r_i, "p10_ms": 1.0, "p90_ms": 1.0,
                         "spread": 0.0, "count": 1, "attempts": 1, "r": r})
    path = write_table(pd.DataFrame(rows), tmp_path / "t.parquet",
                       {"fingerprint": {}, "space": small.to_dict()})
    table = LatencyTable.load(path)
    for arch in small.sample(10, seed=0):
        n_ops = len(ops(arch, small))
        want = n_ops * (1.0 + small.resolutions.index(arch.r))
        assert table.predict(arch) == pytest.approx(want)
        assert table.breakdown(arch)["latency_ms"].sum() == pytest.approx(want)
    anywhere = pd.DataFrame([{**r, "r": 0} for r in rows if r["r"] == small.resolutions[0]])
    table = LatencyTable.load(write_table(anywhere, tmp_path / "u.parquet",
                                          {"fingerprint": {}, "space": small.to_dict()}),
                              small)
    arch = small.smallest()
    assert table.predict(arch) == pytest.approx(len(ops(arch, small)))
    dup = pd.DataFrame(rows + rows[:1])
    with pytest.raises(LutError, match="appear more than once"):
        read_table(write_table(dup, tmp_path / "d.parquet", {"fingerprint": {}}))
