"""The adb-tflite backend: command building, output parsing and disconnect handling,
tested on real benchmark_model output (tests/data/, see its README for sources)."""

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hwnas.backends.adb_tflite import (Adb, AdbTFLiteBackend, benchmark_command,
                                       parse_benchmark_output, parse_op_profile, push_command,
                                       remove_command)
from hwnas.devices import load_device
from hwnas.errors import BackendError, DeviceError

DATA = Path(__file__).parent / "data"


def fixture(name):
    return (DATA / name).read_text()


def test_parse_gpu_run():
    t = parse_benchmark_output(fixture("benchmark_model_gpu.txt"))
    assert (t.count, t.avg_us, t.std_us, t.min_us, t.max_us) == (50, 119375, 1948, 113737, 124776)
    assert t.median_us is None and t.typical_us == 119375  # older builds: mean only
    assert t.init_us == 870557 and t.warmup_avg_us == 122373


def test_parse_logcat_prefixed_output():
    t = parse_benchmark_output(fixture("benchmark_model_logcat.txt"))
    assert t.count == 75 and t.avg_us == pytest.approx(12167.6) and t.std_us == 325


def test_parse_newer_build_with_median():
    t = parse_benchmark_output(fixture("benchmark_model_median.txt"))
    assert (t.count, t.median_us, t.p5_us, t.p95_us) == (100, 1455, 1441, 1502)
    assert t.typical_us == 1455


def test_timed_runs_are_the_last_block_not_the_profile_summary():
    t = parse_benchmark_output(fixture("benchmark_model_cpu_profile.txt"))
    assert t.count == 50 and t.avg_us == pytest.approx(33209.4)


def test_parse_failure_quotes_the_output():
    with pytest.raises(BackendError, match="(?s)no timing statistics.*Segmentation fault"):
        parse_benchmark_output("STARTING!\nLoaded model x\nSegmentation fault\n")


def test_op_profile_cpu_and_gpu():
    cpu = parse_op_profile(fixture("benchmark_model_cpu_profile.txt"))
    assert [r["node_type"] for r in cpu] == ["CONV_2D", "CONV_2D", "CONV_2D", "DEPTH_TO_SPACE"]
    assert cpu[1]["avg_ms"] == pytest.approx(12.931) and cpu[1]["name"] == "[conv2d_1/Relu]"
    assert sum(r["share"] for r in cpu) == pytest.approx(1.0, abs=1e-3)
    gpu = parse_op_profile(fixture("benchmark_model_gpu_profile.txt"))
    assert len(gpu) == 1 and gpu[0]["node_type"] == "TfLiteGpuDelegateV2"
    assert gpu[0]["share"] == pytest.approx(1.0)


def _settings(**kw):
    dev = load_device("android-tflite-gpu")
    return dataclasses.replace(dev.android, **kw)


def test_benchmark_command_building():
    s = _settings(serial="R58M 1", taskset="f0", use_gpu=True)
    argv = benchmark_command(s, "/data/local/tmp/hwnas/my model.tflite", 1, 10, 50,
                             precision="fp16")
    assert argv[:4] == ["adb", "-s", "R58M 1", "shell"] and len(argv) == 5
    remote = argv[4]
    assert remote.startswith("taskset f0 /data/local/tmp/benchmark_model ")
    assert "'--graph=/data/local/tmp/hwnas/my model.tflite'" in remote  # quoted for the phone
    for flag in ("--num_threads=1", "--warmup_runs=10", "--num_runs=50", "--use_gpu=true",
                 "--gpu_precision_loss_allowed=true"):
        assert flag in remote
    assert "--enable_op_profiling" not in remote  # the timed run is never a profiled run
    cpu = benchmark_command(_settings(use_gpu=False), "/d/m.tflite", 4, 1, 20,
                            op_profiling=True)
    assert cpu[:2] == ["adb", "shell"] and "--use_gpu" not in cpu[2]
    assert "--enable_op_profiling=true" in cpu[2] and "taskset" not in cpu[2]
    assert push_command(s, "/tmp/a b.tflite", "/data/x.tflite") == [
        "adb", "-s", "R58M 1", "push", "/tmp/a b.tflite", "/data/x.tflite"]


class FakeRun:
    """Stands in for subprocess.run: replays (returncode, stdout, stderr) answers."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, **kw):
        assert "shell" not in kw  # never a local shell
        self.calls.append(argv)
        code, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(argv, code, out, err)


def test_disconnected_device_is_retried_then_succeeds():
    run = FakeRun([(1, "", "error: device 'R58M' not found"),
                   (1, "", "error: device offline"),
                   (0, fixture("benchmark_model_gpu.txt"), "")])
    waits = []
    adb = Adb(_settings(serial="R58M", retries=3), runner=run, sleep=waits.append)
    out = adb(["adb", "-s", "R58M", "shell", "x"])
    assert "count=50" in out and len(run.calls) == 3 and len(waits) == 2


def test_disconnected_device_gives_up_with_adbs_words():
    run = FakeRun([(1, "", "error: device offline")] * 3)
    adb = Adb(_settings(serial="R58M", retries=3), runner=run, sleep=lambda s: None)
    with pytest.raises(DeviceError, match="R58M is not reachable after 3 attempts.*offline"):
        adb(["adb", "shell", "x"])
    assert len(run.calls) == 3


def test_other_adb_failures_are_not_retried():
    run = FakeRun([(1, "", "adb: error: failed to copy 'a' to 'b': Read-only file system")])
    adb = Adb(_settings(), runner=run, sleep=lambda s: None)
    with pytest.raises(BackendError, match="Read-only file system"):
        adb(["adb", "push", "a", "b"])
    assert len(run.calls) == 1


def test_missing_adb_binary():
    def run(argv, **kw):
        raise FileNotFoundError(argv[0])

    with pytest.raises(DeviceError, match="adb not found"):
        Adb(_settings(), runner=run)(["adb", "devices"])


def test_backend_pushes_once_and_reads_the_median(small, tmp_path):
    answers = [(0, "", "")] * 2 + [(0, fixture("benchmark_model_median.txt"), "")] * 3
    run = FakeRun(answers)
    dev = load_device("android-tflite-cpu")
    backend = AdbTFLiteBackend(dev, tmp_path, adb=Adb(dev.android, runner=run))
    op = next(o for o in __import__("hwnas.ops", fromlist=["x"]).unique_ops(small, [32])
              if o.kind == "mbconv")
    runner = backend.prepare(op.build(), op.input_shape, op.key)
    kinds = [c[1] if c[1] != "-s" else c[3] for c in run.calls]
    assert kinds == ["shell", "push"]  # mkdir, then one push
    pushed = run.calls[1]
    assert pushed[2].endswith(".tflite") and Path(pushed[2]).exists()
    t = runner.time(100)
    assert np.allclose(t, [1455e-6])
    t = runner.time(100)
    assert len(run.calls) == 4 and "--num_runs=100" in run.calls[-1][-1]
    assert runner.info["warmup_inside"]


def test_a_timed_subnet_is_deleted_here_and_on_the_phone(tmp_path):
    from hwnas.backends.tflite import ConvertedCache

    dev = load_device("android-tflite-cpu")
    s = dataclasses.replace(dev.android, serial="R58M 1", remote_dir="/data/local/tmp/my dir")
    assert remove_command(s, ["/d/a b.tflite", "/d/c.tflite"]) == [
        "adb", "-s", "R58M 1", "shell", "rm -f -- '/d/a b.tflite' /d/c.tflite"]
    run = FakeRun([(0, "", "")])
    backend = AdbTFLiteBackend(dataclasses.replace(dev, android=s), tmp_path,
                               adb=Adb(s, runner=run))
    stitched = ConvertedCache().path("subnet-1")  # where prepare_many put the net
    stitched.parent.mkdir(parents=True, exist_ok=True)
    stitched.write_bytes(b"x" * 1000)
    assert backend.discard(["subnet-1", "never-made"]) == 1000 and not stitched.exists()
    assert run.calls == [["adb", "-s", "R58M 1", "shell",
                          f"rm -f -- '/data/local/tmp/my dir/{stitched.name}'"]]
    assert backend.discard(["subnet-1"]) == 0 and len(run.calls) == 1  # nothing left to do


def test_the_gpu_delegate_must_take_the_whole_model(small, tmp_path):
    """A partly delegated model runs the rest on the phone's CPU: never timed as GPU."""
    from hwnas.backends.adb_tflite import check_delegation, delegation

    assert delegation(fixture("benchmark_model_gpu.txt")) == "complete"
    assert delegation(fixture("benchmark_model_logcat.txt")) == "partial (44 delegate kernels)"
    assert delegation("INFO: Though GPU delegate is explicitly applied, the model graph will "
                      "not be executed by the delegate.") == "none"
    assert delegation(fixture("benchmark_model_median.txt")) is None
    check_delegation(fixture("benchmark_model_gpu.txt"), use_gpu=True)
    check_delegation(fixture("benchmark_model_logcat.txt"), use_gpu=False)  # CPU run: fine
    with pytest.raises(BackendError, match="delegate took partial \\(44 delegate kernels\\)"):
        check_delegation(fixture("benchmark_model_logcat.txt"), use_gpu=True)
    argv = benchmark_command(_settings(use_gpu=True), "/d/m.tflite", 1, 1, 5)
    assert "--require_full_delegation=true" in argv[-1]
    dev = load_device("android-tflite-gpu")
    answers = [(0, "", "")] * 2 + [(0, fixture("benchmark_model_gpu.txt"), ""),
                                   (0, fixture("benchmark_model_logcat.txt"), "")]
    backend = AdbTFLiteBackend(dev, tmp_path, adb=Adb(dev.android, runner=FakeRun(answers)))
    op = next(o for o in __import__("hwnas.ops", fromlist=["x"]).unique_ops(small, [32])
              if o.kind == "mbconv")
    runner = backend.prepare(op.build(), op.input_shape, op.key)
    assert np.allclose(runner.time(50), [119375e-6])
    with pytest.raises(BackendError, match="did not run the whole model"):
        runner.time(50)


def test_a_visit_is_one_statistic_and_the_table_says_which(small, tmp_path):
    """benchmark_model reports statistics of its runs, not each run: a visit yields one
    value, and what it is (its median, or its mean on builds without one) is recorded."""
    from hwnas.profile import time_runner

    dev = load_device("android-tflite-cpu")
    answers = [(0, "", "")] * 2 + [(0, fixture("benchmark_model_gpu.txt"), "")] * 3
    backend = AdbTFLiteBackend(dev, tmp_path, adb=Adb(dev.android, runner=FakeRun(answers)))
    op = next(o for o in __import__("hwnas.ops", fromlist=["x"]).unique_ops(small, [32])
              if o.kind == "mbconv")
    runner = backend.prepare(op.build(), op.input_shape, op.key)
    assert runner.info["per_call"] is False
    protocol = dataclasses.replace(dev.protocol, rounds=3, max_retries=0)
    stats = time_runner(runner, protocol)
    assert stats["count"] == 3  # three visits, not 3 x runs calls
    assert stats["statistic"] == ("median across visits of benchmark_model's mean of 50 runs "
                                  "per visit")
