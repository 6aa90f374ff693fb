import hashlib
import json
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import onnx
import pytest
from helpers import export_case, synthetic_table
from onnx import numpy_helper

import hwnas.convert
from hwnas.errors import HwnasError
from hwnas.export import (ExportError, ExportIncomplete, MismatchError, compare, export,
                          read_arch)
from hwnas.predictor import LutSum

needs_litert = pytest.mark.skipif(
    __import__("importlib").util.find_spec("litert_torch") is None,
    reason="needs litert-torch (pip install 'hwnas[tflite-convert]')")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_litert
@pytest.mark.slow
def test_random_archs_plus_extremes_match_pytorch(small, tmp_path):
    """12 small-space archs (the extremes among them) and 2 of each seed space (elastic
    widths; summed kernel paths), each to ONNX and TFLite, verified against PyTorch."""
    from hwnas.space import get_space

    cases = [("small", a) for a in [small.smallest(), small.largest(),
                                    *small.sample(10, seed=11)]]
    for name in ("attentive-small", "mixpath-small"):
        sp = get_space(name)
        cases += [(name, sp.largest()), (name, sp.sample(1, seed=3)[0])]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        manifests = list(pool.map(export_case, [a.to_dict() for _, a in cases],
                                  [str(tmp_path / str(i)) for i in range(len(cases))],
                                  [name for name, _ in cases]))
    for i, ((name, arch), m) in enumerate(zip(cases, manifests)):
        assert m["status"] == "ok", m
        assert get_space(name).arch(m["arch"]) == arch
        checks = {c["variant"]: c for c in m["checks"]}
        assert checks["onnx"]["max_abs_diff"] <= 1e-4
        assert checks["tflite"]["max_abs_diff"] <= 1e-3
        assert {"random0", "real0"} <= set(checks["onnx"]["inputs"])
        for f in m["files"]:  # the manifest's hashes are the files'
            path = tmp_path / str(i) / f["file"]
            assert f["sha256"] == sha256(path) and f["bytes"] == path.stat().st_size
        on_disk = json.loads((tmp_path / str(i) / "manifest.json").read_text())
        assert on_disk["files"] == m["files"]


def _corrupt_first_conv(path):
    model = onnx.load(str(path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(t for t in model.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 5.0  # one weight off by a lot
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))


def test_a_corrupted_onnx_weight_fails_loudly_and_keeps_the_files(small, tmp_path,
                                                                  monkeypatch):
    real = hwnas.convert.to_onnx

    def corrupting(module, sample, path, dynamic_batch=False):
        out = real(module, sample, path, dynamic_batch)
        _corrupt_first_conv(out)
        return out

    monkeypatch.setattr(hwnas.convert, "to_onnx", corrupting)
    with pytest.raises(MismatchError, match="stage 'onnx verify'.*exceeds the tolerance"):
        export(small.smallest(), tmp_path, ["onnx"], space=small, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "onnx verify"
    assert (tmp_path / "model.onnx").exists()
    assert manifest["files"][0]["sha256"] == sha256(tmp_path / "model.onnx")


@needs_litert
def test_a_tflite_file_of_other_weights_fails_verification(small, tmp_path, monkeypatch):
    import copy

    import torch

    real = hwnas.convert.to_tflite

    def converts_a_corrupted_copy(module, sample, path, quantize=None):
        bad = copy.deepcopy(module)
        with torch.no_grad():
            next(bad.parameters()).view(-1)[0] += 5.0
        return real(bad, sample, path, quantize)

    monkeypatch.setattr(hwnas.convert, "to_tflite", converts_a_corrupted_copy)
    with pytest.raises(MismatchError, match="stage 'tflite verify'"):
        export(small.smallest(), tmp_path, ["onnx", "tflite"], space=small, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["failed_stage"] == "tflite verify"
    assert [c["variant"] for c in manifest["checks"]] == ["onnx"]  # ONNX passed before
    assert (tmp_path / "model.onnx").exists() and (tmp_path / "model.tflite").exists()


def test_compare_measures_the_worst_difference():
    x = [("a", np.zeros((1, 3))), ("b", np.ones((1, 3)))]
    check = compare("onnx", lambda v: v + 5e-5, lambda v: v, x, "s")
    assert check["max_abs_diff"] == pytest.approx(5e-5) and check["ok"]
    with pytest.raises(MismatchError, match="input b"):
        compare("onnx", lambda v: v * 1.001, lambda v: v, x, "s")
    with pytest.raises(MismatchError, match="shape"):
        compare("onnx", lambda v: v[:, :2], lambda v: v, x, "s")
    with pytest.raises(MismatchError, match="non-finite"):
        compare("tflite-int8", lambda v: v / 0.0, lambda v: v, x[1:], "s")
    # int8 is reported, not gated
    assert compare("tflite-int8", lambda v: v * 3, lambda v: v, x, "s")["ok"]


def test_arch_sources_and_bad_input(small, tmp_path):
    arch = small.sample(1, seed=4)[0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.json").write_text(json.dumps(arch.to_dict()))
    (run / "config.json").write_text(json.dumps({"space": "small"}))
    (run / "pareto.json").write_text(json.dumps([{"arch": arch.to_dict(), "acc": 0.9}]))
    (run / "ofa.json").write_text(json.dumps(arch.to_ofa()))
    for src in (run, run / "best.json", run / "pareto.json", run / "ofa.json"):
        assert read_arch(src, small) == arch
    with pytest.raises(ExportError, match="unknown format.*'pdf'.*allowed: onnx, tflite"):
        export(arch, tmp_path / "x", ["onnx", "pdf"], space=small)
    with pytest.raises(ExportError, match="device cpu-tflite runs tflite files"):
        export(arch, tmp_path / "y", ["onnx"], space=small, devices=["cpu-tflite"])
    with pytest.raises(HwnasError, match="no device named 'my-phone'; known devices"):
        export(arch, tmp_path / "z", ["onnx"], space=small, devices=["my-phone"])
    (tmp_path / "bad.json").write_text('{"r": 33}')
    with pytest.raises(HwnasError, match="bad.json"):
        export(tmp_path / "bad.json", tmp_path / "w", ["onnx"], space=small)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_tensorrt_is_skipped_with_a_reason_without_it(small, tmp_path):
    from hwnas.backends.tensorrt import TensorRTBackend
    from hwnas.devices import load_device

    problem = TensorRTBackend.check(load_device("cuda-tensorrt"))
    if problem is None:
        pytest.skip("TensorRT is available here; the GPU test covers it")
    # asked for and not produced: incomplete, never "ok" (exit 1 from the CLI)
    with pytest.raises(ExportIncomplete, match="tensorrt build.*--allow-missing tensorrt") \
            as failed:
        export(small.smallest(), tmp_path / "a", ["onnx", "tensorrt"], space=small,
               progress=False)
    assert failed.value.exit_code == 1
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["status"] == "incomplete" and m["skipped"][0]["allowed"] is False
    assert (tmp_path / "a" / "model.onnx").exists()  # what could be made is there
    # the skip accepted explicitly
    res = export(small.smallest(), tmp_path / "b", ["onnx", "tensorrt"], space=small,
                 progress=False, allow_missing=["tensorrt"])
    assert res.ok and res.manifest["skipped"][0]["allowed"] is True
    assert res.manifest["skipped"][0]["stage"] == "tensorrt build"
    assert "tensorrt" in res.manifest["skipped"][0]["why"].lower()


def test_a_failure_of_any_kind_leaves_the_manifest_failed(small, tmp_path, monkeypatch):
    """Not only deliberate errors: a bug or an interrupt mid-export is recorded too."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(hwnas.convert, "to_onnx", broken)
    with pytest.raises(ZeroDivisionError):
        export(small.smallest(), tmp_path, ["onnx"], space=small, progress=False)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failed_stage"] == "onnx export"
    assert m["error"] == "ZeroDivisionError: a bug"


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(small, tmp_path):
    from hwnas.backends.tensorrt import TensorRTBackend
    from hwnas.devices import load_device

    problem = TensorRTBackend.check(load_device("cuda-tensorrt"))
    if problem:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {problem}")
    res = export(small.largest(), tmp_path, ["onnx", "tensorrt"], space=small, fp16=True,
                 progress=False)
    checks = {c["variant"]: c for c in res.manifest["checks"]}
    assert checks["tensorrt"]["ok"] and checks["tensorrt-fp16"]["ok"]
    assert (tmp_path / "model.engine").stat().st_size > 0


def test_cli_export_measures_on_the_device_against_the_prediction(small, tmp_path):
    lut = tmp_path / "lut"
    table = synthetic_table(lut / "cpu-onnxruntime.parquet", small, {"device": "x"})
    LutSum(table).save(lut / "cpu-onnxruntime.predictor.json")
    arch = small.sample(1, seed=8)[0]
    (tmp_path / "a.json").write_text(json.dumps(arch.to_dict()))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "hwnas", "export", "--arch",
                        str(tmp_path / "a.json"), "--space", "small", "--format", "onnx",
                        "--dynamic-batch", "--device", "cpu-onnxruntime", "--lut", str(lut),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "ok" and m["macs"] > 0 and m["params"] > 0
    row = m["latency"][0]
    assert row["device"] == "cpu-onnxruntime" and row["file"] == "model.onnx"
    assert row["measured_ms"] > 0 and row["count"] >= 30
    assert row["measured_in"] == "a new process"
    assert row["predicted_ms"] == pytest.approx(float(table.predict(arch)))
    assert row["measured/predicted"] == pytest.approx(row["measured_ms"] / row["predicted_ms"])
    assert [c["inputs"] for c in m["checks"]][1] == ["batch"]  # the dynamic batch was run
    bad = subprocess.run([sys.executable, "-m", "hwnas", "export", "--arch",
                          str(tmp_path / "a.json"), "--space", "small", "--format", "png",
                          "--out", str(tmp_path / "o2")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "unknown format" in bad.stderr
    assert "Traceback" not in bad.stderr
