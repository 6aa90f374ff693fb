"""Faults survived: ``hwnas search`` and ``hwnas export`` killed with SIGKILL at several
moments, then run again, complete with nothing lost, nothing duplicated and no half-written
file left. (``hwnas profile`` has the same test in tests/test_profile.py.)"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import synthetic_table

from hwnas.predictor import LutSum

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hwnas(*argv, cwd):
    return subprocess.Popen([sys.executable, "-m", "hwnas", *argv], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc, ready, timeout=240):
    """SIGKILL ``proc`` as soon as ``ready()``; True if it was killed mid-run."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run neither finished nor reached the moment to kill it")


def half_written(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


def test_a_killed_search_resumes_to_what_an_uninterrupted_one_finds(small, tmp_path):
    table = synthetic_table(tmp_path / "lut" / "dev.parquet", small, {"device": "dev"})
    LutSum(table).save(tmp_path / "lut" / "dev.predictor.json")
    args = ["search", "--space", "small", "--objectives", "latency:dev,params", "--budget-ms",
            "2.5", "--evaluations", "12000", "--pop-size", "40", "--lut", "lut"]
    whole = subprocess.run([sys.executable, "-m", "hwnas", *args, "--out", "whole"],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    run, archive = tmp_path / "cut", tmp_path / "cut" / "archive.parquet"

    def rows():
        try:
            return len(pd.read_parquet(archive))
        except (OSError, ValueError):
            return 0

    killed = [kill_when(hwnas(*args, "--out", "cut", cwd=tmp_path), archive.exists)]
    first = rows()
    killed.append(kill_when(hwnas("search", "--resume", "cut", cwd=tmp_path),
                            lambda: rows() > first * 1.5))
    assert killed == [True, True] and first > 0  # killed twice, mid-run
    assert not half_written(run)
    done = subprocess.run([sys.executable, "-m", "hwnas", "search", "--resume", "cut"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a = pd.read_parquet(tmp_path / "whole" / "archive.parquet")
    b = pd.read_parquet(archive)
    assert len(a) == len(b) and list(a["key"]) == list(b["key"])  # nothing lost or doubled
    pd.testing.assert_frame_equal(a, b)
    for name in ("best.json", "pareto.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (run / name).read_bytes()
    assert not half_written(run)


def test_a_killed_export_runs_again_to_a_true_manifest(small, tmp_path):
    (tmp_path / "a.json").write_text(small.largest().to_json())
    args = ["export", "--arch", "a.json", "--space", "small", "--format", "onnx,tflite",
            "--out", "exp"]
    out = tmp_path / "exp"
    moments = [lambda: (out / "manifest.json").exists(),           # just started
               lambda: (out / "model.onnx").exists()]              # converting to TFLite
    for ready in moments:
        assert kill_when(hwnas(*args, cwd=tmp_path), ready)
        m = json.loads((out / "manifest.json").read_text())  # never half-written
        assert m["status"] in ("running", "failed")           # and never claims success
    again = subprocess.run([sys.executable, "-m", "hwnas", *args], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "ok" and {c["variant"] for c in m["checks"]} == {"onnx", "tflite"}
    for f in m["files"]:
        assert hashlib.sha256((out / f["file"]).read_bytes()).hexdigest() == f["sha256"]
    assert not half_written(out)
