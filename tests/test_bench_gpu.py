"""The one-go GPU check (``python -m benchmarks gpu``) on a machine without a GPU: it
measures nothing, says why, and never falls back to the CPU; a check that fails is its
own row, not the end of the run, and never a success."""

import argparse

import pytest
import torch

from benchmarks import bench_gpu


def test_without_a_gpu_nothing_is_measured_and_that_is_said():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run 'python -m benchmarks gpu' instead")
    res = bench_gpu.run(argparse.Namespace(subnets=30, out=None))
    assert len(res.rows) == 1 and res.rows[0]["status"].startswith("not run: no CUDA GPU")
    assert res.summary["gpu"] is None and "nothing was measured" in res.notes[0]


def test_a_failing_check_is_reported_and_the_next_one_runs():
    rows = []
    bench_gpu.step(rows, "breaks", lambda: 1 / 0)
    bench_gpu.step(rows, "works", lambda: {"value": 3})
    assert rows[0]["status"] == "failed: ZeroDivisionError: division by zero"
    assert rows[1]["status"] == "ran" and rows[1]["value"] == 3
