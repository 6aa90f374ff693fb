import subprocess
import sys

import pytest
import torch
import yaml

from hwnas.backends import BACKENDS
from hwnas.devices import (check_usable, device_fingerprint, find_device_file,
                           fingerprint_diff, list_device_files, load_device, parse_device)
from hwnas.errors import DeviceError

SHIPPED = ["cpu-onnxruntime", "cpu-torch", "cpu-tflite", "cuda-torch", "cuda-onnxruntime",
           "cuda-tensorrt", "android-tflite-gpu", "android-tflite-cpu", "cpu-onnxruntime-b32",
           "cuda-torch-b64"]


def test_every_shipped_device_file_validates():
    names = {p.stem for p in list_device_files()}
    assert set(SHIPPED) <= names
    for name in SHIPPED:
        dev = load_device(name)
        assert dev.name == name and dev.backend in BACKENDS
    gpu = load_device("android-tflite-gpu")
    assert gpu.android.use_gpu and gpu.android.remote_dir.startswith("/data/local/tmp")
    assert load_device("android-tflite-cpu").android.taskset == "f0"
    assert load_device("cpu-onnxruntime").execution_provider == "CPUExecutionProvider"


def test_device_by_path_and_name(tmp_path):
    p = find_device_file("cpu-torch")
    assert load_device(str(p)) == load_device("cpu-torch")
    with pytest.raises(DeviceError, match="no device named 'phone9'.*cpu-torch"):
        load_device("phone9")
    with pytest.raises(DeviceError, match="does not exist"):
        load_device(tmp_path / "x.yaml")


BASE = {"name": "d", "backend": "onnxruntime", "hardware": "cpu"}


@pytest.mark.parametrize("change, words", [
    ({"colour": "red"}, ["unknown key", "colour", "allowed"]),
    ({"backend": "coreml"}, ["'backend'", "coreml", "allowed"]),
    ({"hardware": "tpu"}, ["'hardware'", "tpu"]),
    ({"backend": "tensorrt"}, ["tensorrt", "cannot run on hardware 'cpu'", "cuda"]),
    ({"threads": 0}, ["'threads'", "1..1024"]),
    ({"threads": 5000}, ["'threads'", "1..1024", "5000"]),
    ({"protocol": {"runs": 10 ** 9}}, ["protocol.runs", "100,000"]),
    ({"threads": "two"}, ["'threads'", "integer", "str"]),
    ({"threads": True}, ["'threads'", "integer"]),
    ({"precision": "int4"}, ["'precision'", "int4", "fp32"]),
    ({"precision": "fp16"}, ["fp16", "GPU"]),
    ({"execution_provider": "CUDAExecutionProvider"},
     ["execution_provider", "CPUExecutionProvider"]),
    ({"protocol": {"rounds": 2, "speed": 1}}, ["unknown key", "speed", "protocol"]),
    ({"protocol": {"runs": -1}}, ["protocol.runs", ">= 0"]),
    ({"protocol": {"max_spread": "low"}}, ["protocol.max_spread", "number"]),
    ({"cpu_affinity": [0, -1]}, ["cpu_affinity", "core numbers"]),
    ({"cpu_affinity": "first"}, ["cpu_affinity", "'auto'"]),
    ({"batch": 0}, ["'batch'", "1..4096"]),
    ({"batch": 10 ** 6}, ["'batch'", "1..4096", "1000000"]),
    ({"batch": "32"}, ["'batch'", "integer", "str"]),
    ({"protocol": {"min_time_ms": 10 ** 9}}, ["protocol.min_time_ms", "60,000"]),
    ({"android": {"serial": "x"}}, ["'android'", "adb-tflite"]),
    ({"name": "a/b"}, ["'name'", "file-safe"]),
    ({"protocol": {"statistic": "mean"}}, ["protocol.statistic", "'mean'", "median, p10"]),
])
def test_bad_device_fields_are_named(change, words):
    with pytest.raises(DeviceError) as info:
        parse_device({**BASE, **change}, where="devices/d.yaml")
    msg = str(info.value)
    assert msg.startswith("devices/d.yaml")
    for w in words:
        assert w in msg


def test_android_section_validation():
    base = {"name": "p", "backend": "adb-tflite", "hardware": "android"}
    dev = parse_device({**base, "android": {"serial": "R58M", "use_gpu": True}})
    assert dev.android.serial == "R58M" and dev.android.retries == 3
    with pytest.raises(DeviceError, match="android.taskset"):
        parse_device({**base, "android": {"taskset": "big"}})
    with pytest.raises(DeviceError, match="android.use_gpu.*true or false"):
        parse_device({**base, "android": {"use_gpu": "yes"}})
    with pytest.raises(DeviceError, match="missing required field 'hardware'"):
        parse_device({"name": "p", "backend": "adb-tflite"})
    with pytest.raises(DeviceError, match="YAML mapping"):
        parse_device(["not", "a", "mapping"])


def test_batch_is_a_device_setting_and_a_name(tmp_path):
    b32 = load_device("cpu-onnxruntime-b32")
    assert b32.batch == 32 and b32.input_shape((1, 3, 224, 224)) == (32, 3, 224, 224)
    assert device_fingerprint(b32)["batch"] == 32
    assert device_fingerprint(load_device("cpu-onnxruntime"))["batch"] == 1
    # any device at any batch: by name, or with the override (profile --batch)
    b16 = load_device("cpu-onnxruntime-b16")
    assert b16.name == "cpu-onnxruntime-b16" and b16.batch == 16
    assert b16 == load_device("cpu-onnxruntime", batch=16)
    assert load_device("cpu-onnxruntime-b32", batch=64).name == "cpu-onnxruntime-b64"
    # a batch whose device has a file of its own is that device: one name, one protocol
    assert load_device("cpu-onnxruntime-b32", batch=1) == load_device("cpu-onnxruntime")
    assert load_device("cpu-onnxruntime", batch=32) == b32 and b32.protocol.statistic == "p10"
    # any other batch above 1 loads each model for its visit only (sessions hold activations)
    assert b16.protocol.reload and not load_device("cpu-onnxruntime").protocol.reload
    assert b16.protocol.runs == load_device("cpu-onnxruntime").protocol.runs
    assert load_device("cuda-torch-b64").batch == 64
    with pytest.raises(DeviceError, match="no device named 'phone9-b4'"):
        load_device("phone9-b4")
    # a runtime that takes batch 1 only says so, naming what it takes
    with pytest.raises(DeviceError, match="batch 2 cannot run on backend 'adb-tflite'.*1..1"):
        load_device("android-tflite-gpu", batch=2)
    assert load_device("android-tflite-cpu", batch=2).batch == 2
    with pytest.raises(DeviceError, match="'tflite'.*batch 1..1"):
        parse_device({"name": "g", "backend": "tflite", "hardware": "cuda", "batch": 8})


def test_cpu_affinity_auto():
    dev = parse_device({**BASE, "cpu_affinity": "auto"})
    assert dev.cpu_affinity == "auto" and dev.to_dict()["cpu_affinity"] == "auto"
    assert check_usable(dev) is None
    with pytest.raises(DeviceError, match="'auto' is for hardware 'cpu'"):
        parse_device({"name": "g", "backend": "torch", "hardware": "cuda", "cpu_affinity": "auto"})


def test_new_device_is_a_new_yaml_file(tmp_path):
    p = tmp_path / "my-laptop.yaml"
    p.write_text(yaml.safe_dump({"name": "my-laptop", "backend": "torch", "hardware": "cpu",
                                 "threads": 2, "cpu_affinity": [0, 1]}))
    dev = load_device(p)
    assert dev.threads == 2 and dev.cpu_affinity == (0, 1) and dev.path == str(p)
    p.write_text("name: [unclosed")
    with pytest.raises(DeviceError, match="not valid YAML"):
        load_device(p)


def test_fingerprint_records_what_decides_the_numbers():
    fp = device_fingerprint(load_device("cpu-onnxruntime"))
    for key in ("cpu", "cores", "runtime", "runtime_version", "threads", "precision", "hwnas",
                "execution_provider"):
        assert fp[key] not in (None, ""), key
    import onnxruntime

    assert fp["runtime_version"] == onnxruntime.__version__
    other = dict(fp, threads=2)
    assert fingerprint_diff(fp, other) == ["threads: 1 vs 2"]
    assert fingerprint_diff(fp, dict(fp)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_usability_says_what_is_missing_without_a_gpu():
    assert check_usable(load_device("cpu-onnxruntime")) is None
    assert check_usable(load_device("cpu-torch")) is None
    assert "no CUDA GPU" in check_usable(load_device("cuda-torch"))
    assert "CUDAExecutionProvider" in check_usable(load_device("cuda-onnxruntime"))
    assert "tensorrt" in check_usable(load_device("cuda-tensorrt"))


def test_adb_usability_messages(monkeypatch):
    from hwnas.backends.adb_tflite import AdbTFLiteBackend

    dev = load_device("android-tflite-gpu")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "adb not found on PATH" in AdbTFLiteBackend.check(dev)

    class Proc:
        def __init__(self, out):
            self.stdout = out

    listing = "List of devices attached\nR58M123\tdevice\nemulator-5554\toffline\n"
    run = lambda *a, **k: Proc(listing)  # noqa: E731
    import dataclasses

    want = dataclasses.replace(dev, android=dataclasses.replace(dev.android, serial="XYZ"))
    assert "no Android device with serial 'XYZ'" in AdbTFLiteBackend.check(want, runner=run)
    assert AdbTFLiteBackend.check(dev, runner=run) is None  # the only authorised one
    none = lambda *a, **k: Proc("List of devices attached\n\n")  # noqa: E731
    assert "no Android device attached" in AdbTFLiteBackend.check(dev, runner=none)


def test_devices_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hwnas", "devices"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cpu-onnxruntime" in r.stdout and "android-tflite-gpu" in r.stdout
    assert "adb" in r.stdout  # says what the phone devices miss here
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbackend: onnxruntime\nhardware: cpu\nthreads: 0\n")
    r = subprocess.run([sys.executable, "-m", "hwnas", "devices", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "'threads' must be in 1..1024" in r.stdout
