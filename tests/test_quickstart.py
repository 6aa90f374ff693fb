import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

needs_litert = pytest.mark.skipif(
    __import__("importlib").util.find_spec("litert_torch") is None,
    reason="needs litert-torch (pip install 'hwnas[tflite-convert]')")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quick(out, **kw):
    from hwnas.quickstart import QuickstartConfig

    return QuickstartConfig(out=str(out), subnets=12, train_epochs=1, evaluations=8,
                            protocol_runs=5, protocol_rounds=2, tflite_subnets=6, **kw)


def _archive_keys(out) -> set:
    return set(pd.read_parquet(out / "search" / "archive.parquet")["key"])


def _assert_confirmed(result) -> None:
    """The reported winner was measured within the budget before it was reported."""
    confirmed = result.verify["confirmed"]
    assert len(confirmed) == 1
    only = next(iter(confirmed.values()))
    assert only["measured_ms"] <= result.budget_ms and only["key"] == result_key(result)


def result_key(result) -> str:
    from hwnas.space import get_space

    return get_space("small").arch(result.arch).key


def _drift(row) -> float:
    """The factor the quickstart scaled a prediction by when the calibration probes said
    the machine's speed moved since profiling (it says so in the row), else 1."""
    import re

    found = re.search(r"scaled by (\d+\.\d+)", row.get("predictor") or "")
    return float(found.group(1)) if found else 1.0


@needs_litert
@pytest.mark.slow
def test_quickstart_end_to_end_at_reduced_size(tmp_path):
    from hwnas.predictor import load_predictor
    from hwnas.quickstart import run
    from hwnas.space import get_space

    out = tmp_path / "qs"
    cli = subprocess.run([sys.executable, "-m", "hwnas", "quickstart", "--out", str(out),
                          "--subnets", "12", "--epochs", "1", "--evaluations", "8",
                          "--runs", "5", "--rounds", "2", "--tflite-subnets", "6"],
                         capture_output=True, text=True, timeout=900)
    assert cli.returncode == 0, cli.stderr[-3000:] + cli.stdout[-3000:]
    assert "the chosen network" in cli.stdout and "report" in cli.stdout
    assert "cpu-onnxruntime timing noise" in cli.stdout  # how sure the figures are
    # the pointer onwards: the ImageNet chain on Once-for-All's supernet
    assert "hwnas ofa import-supernet" in cli.stdout and "--accuracy ofa-predictor:" in \
        cli.stdout and "hwnas evaluate" in cli.stdout
    # ... and the other spaces, with their sizes
    assert "search space presets" in cli.stdout and "attentive-small" in cli.stdout and \
        "MixPath" in cli.stdout
    res = json.loads((out / "result.json").read_text())
    small = get_space("small")
    # every artefact of the chain is there
    for rel in ("lut/cpu-onnxruntime.parquet", "lut/cpu-onnxruntime.subnets.parquet",
                "lut/cpu-onnxruntime.predictor.json", "lut/cpu-onnxruntime.predictor.png",
                "lut/cpu-tflite.parquet", "lut/cpu-tflite.subnets.parquet",
                "lut/cpu-tflite.predictor.json", "lut/cpu-tflite.predictor.png",
                "supernet-e1/last.pt", "training.png", "search/archive.parquet",
                "search/best.json", "search/front.png", "search/hypervolume.png",
                "export/model.onnx", "export/model.tflite", "export/manifest.json",
                "report.html", "result.json"):
        assert (out / rel).stat().st_size > 0, rel
    # the winner is the search's best, measured on the CPU within the budget before it
    # was reported
    arch = small.load_arch(out / "search" / "best.json")
    assert small.arch(res["arch"]) == arch
    pred = load_predictor(out / "lut" / "cpu-onnxruntime.predictor.json")
    summary = json.loads((out / "search" / "summary.json").read_text())
    confirmed = summary["verify"]["confirmed"]
    assert len(confirmed) == 1 and next(iter(confirmed.values()))["measured_ms"] <= \
        res["budget_ms"]
    assert res["verify"]["measurements"] >= 1
    # checked in a new process, beside the table's own subnets: the latency that decides is
    # the one at the table's speed, the raw one kept beside it
    assert res["verify"]["measured_in"] == "a new process"
    checked = pd.read_parquet(out / "search" / "measured.parquet")
    assert (checked["raw_ms"] > 0).all() and checked["clock_during"].between(0.3, 3).all()
    assert np.allclose(checked["latency_ms"], checked["at_table_ms"] * checked["to_today"])
    # the median over rounds of each round's p10 over that round's clock, not the p10 of
    # all calls (which a fast round sets) over the median clock
    assert np.allclose(checked["at_table_ms"], checked["raw_ms"] / checked["clock_during"],
                       rtol=0.6)
    assert all(r["measured_in"] == "a new process" for r in res["latency"])
    for device in ("cpu-onnxruntime", "cpu-tflite"):
        spreads = pd.read_parquet(out / "lut" / f"{device}.subnets.parquet")["spread"]
        assert res["noise"][device]["subnets"] == pytest.approx(spreads.median())
        # the held-out subnets timed a second time beside the predictor's figure: how far
        # the host lets two timings of one net agree (12 subnets: 4 held out; 6: 2)
        held = load_predictor(out / "lut" / f"{device}.predictor.json").extra["heldout_keys"]
        assert res["noise"][device]["repeat_n"] == len(held) == (
            4 if device == "cpu-onnxruntime" else 2)
        assert 0 <= res["noise"][device]["repeat_within_10pct"] <= 1
    from hwnas.quickstart import QuickstartResult

    closing = {row[0]: row[1] for row in QuickstartResult(**res).tables()[0].rows}
    assert "the same subnets timed again" in closing["cpu-tflite predictor (held out)"]
    subs = pd.read_parquet(out / "lut" / "cpu-onnxruntime.subnets.parquet")
    assert len(subs) == 12
    assert subs["latency_ms"].min() <= res["budget_ms"] <= subs["latency_ms"].max()
    # the manifest: exported what was chosen, hashes match, both formats measured
    m = json.loads((out / "export" / "manifest.json").read_text())
    assert m["status"] == "ok" and small.arch(m["arch"]) == arch
    for f in m["files"]:
        assert f["sha256"] == sha256(out / "export" / f["file"])
    rows = {r["device"]: r for r in m["latency"]}
    assert rows["cpu-onnxruntime"]["file"] == "model.onnx"
    assert rows["cpu-onnxruntime"]["measured_ms"] > 0
    assert rows["cpu-onnxruntime"]["predicted_ms"] == pytest.approx(
        float(pred.predict([arch])[0]) * _drift(rows["cpu-onnxruntime"]), rel=0.01)
    assert rows["cpu-tflite"]["file"] == "model.tflite" and rows["cpu-tflite"]["measured_ms"] > 0
    # the table's subnets nearest the prediction timed between the rounds (12 ONNX Runtime
    # rows: a calmer half of 6, 5 of them; 6 TFLite rows: 3): the table's speed too
    assert rows["cpu-onnxruntime"]["clock"] == "5 profiled subnets"
    assert rows["cpu-tflite"]["clock"] == "3 profiled subnets"
    for row in rows.values():
        assert 0.3 < row["clock_during"] < 3 and row["at_table_speed_ms"] > 0
        assert row["at_table_speed/predicted"] == pytest.approx(
            row["at_table_speed_ms"] / row["predicted_ms"] * _drift(row), rel=0.01)
    # TFLite is profiled as ONNX Runtime is: its own LUT of every op, its own subnets, the
    # same predictor kind judged on held-out subnets
    tfl = load_predictor(out / "lut" / "cpu-tflite.predictor.json")
    assert tfl.kind == "xgboost" and len(
        pd.read_parquet(out / "lut" / "cpu-tflite.subnets.parquet")) == 6
    assert len(pd.read_parquet(out / "lut" / "cpu-tflite.parquet")) == len(
        pd.read_parquet(out / "lut" / "cpu-onnxruntime.parquet"))
    assert rows["cpu-tflite"]["predicted_ms"] == pytest.approx(
        float(tfl.predict([arch])[0]) * _drift(rows["cpu-tflite"]), rel=0.01)
    assert set(res["predictor_metrics"]) == {"cpu-onnxruntime", "cpu-tflite"}
    assert res["latency"] == m["latency"]
    # the report is one static file: images inlined, nothing fetched
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # 2 predictors, training, front, HV
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert res["name"] in page
    # a re-run reuses the tables, the checkpoint and the search (another budget's search
    # beside it: test_another_budget_searches_apart_and_the_first_comes_back)
    before = {p: (out / p).stat().st_mtime_ns for p in (
        "lut/cpu-onnxruntime.parquet", "lut/cpu-onnxruntime.subnets.parquet",
        "lut/cpu-tflite.parquet", "supernet-e1/last.pt")}
    searched = _archive_keys(out)
    again = run(quick(out), progress=False)  # same sizes, through the Python API
    # the search is resumed, not run again: no arch evaluated anew. (The winner can differ:
    # the calibration probes may scale the predictions by another factor on this host, and
    # then another arch is the best under the budget, measured before it is reported.)
    assert _archive_keys(out) == searched
    _assert_confirmed(again)
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before


def test_the_closing_table_says_which_speed_a_timed_again_check_aimed_at(tmp_path):
    from hwnas.quickstart import QuickstartResult

    def closing(predictor: str) -> str:
        row = {"device": "cpu-onnxruntime", "file": "model.onnx", "predicted_ms": 0.2,
               "measured_ms": 0.21, "measured/predicted": 1.05, "predictor": predictor,
               "tries": [[0.3, 1.31], [0.21, 1.02]]}
        res = QuickstartResult(tmp_path, {}, "a", 0.9, 1, 1, 0.25, [row], {}, {})
        return dict(res.tables()[0].rows)["cpu-onnxruntime (model.onnx)"]

    plain = closing("xgboost (p.json); probes within 10%")
    assert "timed 2 times, the clock at 1.31x, 1.02x: the try nearest the table's speed kept" \
        in plain and "scaled" not in plain
    scaled = closing("xgboost (p.json); probes drifted; predictions scaled by 1.27")
    assert "the try nearest 1.27x (the prediction's scaling) kept" in scaled
    assert "(scaled by 1.27: the calibration probes drifted)" in scaled


def test_quickstart_bad_settings_are_refused(tmp_path):
    from hwnas.quickstart import QuickstartConfig, QuickstartError

    with pytest.raises(QuickstartError, match="budget_ms=-1"):
        QuickstartConfig(budget_ms=-1)
    with pytest.raises(QuickstartError, match="minutes must be positive"):
        QuickstartConfig().scaled(0)
    r = subprocess.run([sys.executable, "-m", "hwnas", "quickstart", "--budget-ms", "-2",
                        "--out", str(tmp_path / "q")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "budget_ms=-2" in r.stderr and "Traceback" not in r.stderr


def test_another_budget_searches_apart_and_the_first_comes_back(tmp_path):
    """``out/search`` holds the search of the current settings; a search with other
    settings is moved aside (never deleted) and comes back to be resumed."""
    from hwnas.quickstart import _search_folder

    first, loose = {"budgets_ms": [0.2], "seed": 0}, {"budgets_ms": [0.5], "seed": 0}

    def searched(settings, marker):  # what a search leaves: its config and an archive
        run_dir = _search_folder(tmp_path, settings)
        assert run_dir == tmp_path / "search"
        if not (run_dir / "config.json").exists():
            run_dir.mkdir()
            (run_dir / "config.json").write_text(json.dumps(settings))
            (run_dir / "archive.parquet").write_text(marker)
        return (run_dir / "archive.parquet").read_text()

    assert searched(first, "first") == "first"
    assert searched(first, "again") == "first"  # same settings: resumed where it is
    assert searched(loose, "loose") == "loose"  # another budget: searched anew ...
    kept = list(tmp_path.glob("search-*"))      # ... and the first kept beside it
    assert len(kept) == 1 and (kept[0] / "archive.parquet").read_text() == "first"
    assert searched(first, "never") == "first"  # back to the first budget: resumed
    kept = list(tmp_path.glob("search-*"))
    assert len(kept) == 1 and (kept[0] / "archive.parquet").read_text() == "loose"
