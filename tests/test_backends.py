"""Real runtimes on this machine's CPU: PyTorch, ONNX Runtime and LiteRT. GPU paths run
where the hardware is, and skip elsewhere saying what they need."""

import dataclasses
import types

import numpy as np
import pytest
import torch

from hwnas.backends import get_backend
from hwnas.backends.base import sample_input
from hwnas.devices import load_device
from hwnas.ops import build_network, ops, unique_ops


def _op(space, kind="mbconv", se=True):
    return next(o for o in unique_ops(space, [40]) if o.kind == kind and bool(o.se_mid) == se)


@pytest.fixture(scope="module")
def subnet(small):
    torch.manual_seed(0)
    arch = small.sample(1, seed=3)[0]
    return arch, build_network(ops(arch, small))


@pytest.mark.parametrize("name, tol", [("cpu-torch", 1e-6), ("cpu-onnxruntime", 1e-4),
                                       ("cpu-tflite", 1e-3)])
def test_cpu_backends_time_an_op_and_a_subnet(name, tol, small, subnet, tmp_path):
    backend = get_backend(load_device(name), tmp_path)
    torch.manual_seed(0)
    op = _op(small)
    module = op.build()
    runner = backend.prepare(module, op.input_shape, op.key)
    t = runner.time(20)
    assert t.shape == (20,) and np.all(t > 0) and np.all(t < 1.0)
    x = sample_input(op.input_shape, seed=5).numpy()
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.abs(runner.infer(x) - ref).max() <= tol
    arch, net = subnet
    shape = (1, 3, arch.r, arch.r)
    runner = backend.prepare(net, shape, "subnet:" + arch.key)
    assert np.all(runner.time(5) > 0)
    x = sample_input(shape, seed=6).numpy()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(runner.infer(x) - ref).max() <= tol


def test_onnx_files_are_cached_by_key(small, tmp_path):
    backend = get_backend(load_device("cpu-onnxruntime"), tmp_path)
    op = _op(small, se=False)
    backend.prepare(op.build(), op.input_shape, op.key)
    files = list(tmp_path.glob("*.onnx"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    backend.prepare(op.build(), op.input_shape, op.key)
    assert files[0].stat().st_mtime_ns == mtime


def test_many_onnx_exports_run_in_worker_processes(small, tmp_path, monkeypatch):
    """Enough missing exports go to spawned workers (two here, whatever the cores); each
    file is the model prepare() builds, with the same seed-0 weights, and a second call
    exports nothing."""
    from hwnas import workers
    from hwnas.backends import onnxrt

    monkeypatch.setattr(workers, "WORKERS", 2)
    monkeypatch.setattr(onnxrt, "MIN_EXPORTS_IN_WORKERS", 4)
    monkeypatch.setattr(onnxrt, "EXPORTS_PER_TASK", 2)
    here = []
    monkeypatch.setattr(onnxrt, "export_file", lambda *a, **k: here.append(a))  # not here
    chosen = unique_ops(small, [32])[:5]
    backend = get_backend(load_device("cpu-onnxruntime"), tmp_path)
    done = []
    runners = backend.prepare_many([(o.build, o.input_shape, o.key) for o in chosen],
                                   done.append)
    assert not here and sum(done) == 5 and len(list(tmp_path.glob("*.onnx"))) == 5
    for op, runner in zip(chosen, runners):
        torch.manual_seed(0)
        module = op.build().eval()
        x = sample_input(op.input_shape, seed=2).numpy()
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        assert np.abs(runner.infer(x) - ref).max() <= 1e-4
    mtimes = sorted(f.stat().st_mtime_ns for f in tmp_path.glob("*.onnx"))
    backend.prepare_many([(o.build, o.input_shape, o.key) for o in chosen])
    assert not here and sorted(f.stat().st_mtime_ns for f in tmp_path.glob("*.onnx")) == mtimes


def test_onnx_subnets_are_stitched_from_their_exported_ops(small, tmp_path, monkeypatch):
    """A subnet's ONNX file is assembled from its ops' files (exported where missing, as
    the LUT exports them): it computes what those ops compute in PyTorch, has the
    exporter's own nodes for the whole subnet, in order (Identity aside, which ONNX
    Runtime removes), and a second call exports and stitches nothing."""
    import onnx

    from hwnas.backends import onnxrt
    from hwnas.backends.base import model_key
    from hwnas.convert import to_onnx
    from hwnas.ops import NetworkBuild

    dev = load_device("cpu-onnxruntime")
    arch = small.sample(1, seed=7)[0]
    op_list = ops(arch, small)
    shape = (1, 3, arch.r, arch.r)
    item = (NetworkBuild(tuple(op_list)), shape, model_key(f"{small.id}:{arch.key}", dev))
    backend = get_backend(dev, tmp_path)
    done = []
    runner, = backend.prepare_many([item], done.append)
    assert sum(done) == 1
    assert len(list(tmp_path.glob("*.onnx"))) == len({o.key for o in op_list}) + 1
    parts = []
    for op in op_list:
        torch.manual_seed(0)
        parts.append(op.build())
    x = sample_input(shape, seed=4)
    with torch.no_grad():
        ref = torch.nn.Sequential(*parts).eval()(x).numpy()
    assert np.abs(runner.infer(x.numpy()) - ref).max() <= 1e-4
    torch.manual_seed(0)
    direct = to_onnx(build_network(op_list), sample_input(shape), tmp_path / "direct.onnx")
    kinds = [[n.op_type for n in onnx.load(str(p)).graph.node if n.op_type != "Identity"]
             for p in (runner.info["onnx"], direct)]
    assert kinds[0] == kinds[1] and kinds[0].count("Conv") >= len(op_list)
    assert np.all(runner.time(20) > 0)
    calls = []
    monkeypatch.setattr(onnxrt, "export_file", lambda *a, **k: calls.append(a))
    monkeypatch.setattr("hwnas.convert.stitch_onnx", lambda *a: calls.append(a))
    again, = backend.prepare_many([item])
    assert not calls and again.info["onnx"] == runner.info["onnx"]


def test_stitching_refuses_models_that_do_not_chain(small, tmp_path):
    import onnx

    from hwnas.convert import stitch_onnx, to_onnx
    from hwnas.errors import BackendError

    stem, first = (o for o in unique_ops(small, [32]) if o.kind in ("stem", "first"))
    files = [to_onnx(op.build(), sample_input(op.input_shape), tmp_path / f"{op.kind}.onnx")
             for op in (stem, first)]
    models = [onnx.load(str(f)) for f in files]
    assert len(stitch_onnx(models).graph.input) == 1
    with pytest.raises(BackendError, match="model 1 of a stitch takes"):
        stitch_onnx([models[0], models[0]])  # the stem takes 3 channels, gives more
    with pytest.raises(BackendError, match="nothing to stitch"):
        stitch_onnx([])


def test_tflite_models_take_nhwc_without_a_transpose(small, tmp_path):
    backend = get_backend(load_device("cpu-tflite"), tmp_path)
    op = _op(small)
    runner = backend.prepare(op.build(), op.input_shape, op.key)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=runner.info["tflite"])
    n, c, h, w = op.input_shape
    assert tuple(it.get_input_details()[0]["shape"]) == (n, h, w, c)
    assert "TRANSPOSE" not in runner.info["ops"]
    assert "DEPTHWISE_CONV_2D" in runner.info["ops"]


def test_batchnorm_is_folded_before_conversion_without_changing_the_ops(small, tmp_path):
    """Folding saves the converter work, not the model: the folded copy computes what the
    module computes (the module itself untouched), and the converter, given the unfolded
    module, produces the same TFLite ops."""
    from hwnas.backends.tflite import interpreter_runner
    from hwnas.convert import ChannelsLast, _litert_torch, fold_batchnorm, nhwc, to_tflite

    for op in (_op(small), _op(small, "stem", se=False)):
        torch.manual_seed(0)
        module = op.build()
        for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)  # not identity
        folded = fold_batchnorm(module)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
        x = sample_input(op.input_shape, seed=4)
        with torch.no_grad():
            assert torch.allclose(folded(x), module(x), atol=1e-5)
        unfolded = tmp_path / f"{op.kind}-unfolded.tflite"
        unfolded.write_bytes(_litert_torch().convert(ChannelsLast(module).eval(),
                                                     (nhwc(x),)).model_content())
        blank = np.zeros((1, *x.shape[2:], x.shape[1]), np.float32)
        ops_of = [interpreter_runner(p, blank, 1).info["ops"]
                  for p in (unfolded, to_tflite(module, x, tmp_path / f"{op.kind}.tflite"))]
        assert ops_of[0] == ops_of[1] and "CONV_2D" in ops_of[0], op.key


def test_tflite_converts_many_ops_at_once_and_caches_them(small, tmp_path, monkeypatch):
    """One litert-torch conversion holds many ops (branches of one graph, split into a file
    each); each file has the ops a conversion of that op alone gives, and matches PyTorch;
    a later run converts nothing again."""
    from hwnas import workers
    from hwnas.backends import tflite
    from hwnas.convert import to_tflite

    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tflite, "MODELS_PER_CONVERSION", 3)
    monkeypatch.setattr(workers, "WORKERS", 1)  # counted here, not in workers
    conversions = []
    real = tflite.ConvertedCache.convert
    monkeypatch.setattr(tflite.ConvertedCache, "convert",
                        lambda self, g: (conversions.append(len(g)), real(self, g)))
    dev = load_device("cpu-tflite")
    chosen = unique_ops(small, [32])[:4] + [_op(small)]
    items = [(o.build, o.input_shape, f"{o.key}|fp32") for o in chosen]
    runners = get_backend(dev, tmp_path).prepare_many(items)
    assert conversions == [3, 2]
    files = sorted((tmp_path / "cache" / "tflite").rglob("*.tflite"))
    assert len(files) == 5 and {r.info["tflite"] for r in runners} == {str(f) for f in files}
    for i, (op, runner) in enumerate(zip(chosen, runners)):
        assert np.all(runner.time(10) > 0)
        torch.manual_seed(0)
        module = op.build()
        x = sample_input(op.input_shape, seed=4).numpy()
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        assert np.abs(runner.infer(x) - ref).max() <= 1e-3, op.key
        alone = tflite.interpreter_runner(to_tflite(module, sample_input(op.input_shape),
                                                    tmp_path / f"alone{i}.tflite"),
                                          np.zeros(runner.info["input_shape"], np.float32), 1)
        assert runner.info["ops"] == alone.info["ops"], op.key
    stamps = [f.stat().st_mtime_ns for f in files]
    again = get_backend(dev, tmp_path / "other").prepare_many(items)  # another run, folder
    assert conversions == [3, 2] and [f.stat().st_mtime_ns for f in files] == stamps
    assert [r.info["tflite"] for r in again] == [r.info["tflite"] for r in runners]


def test_tflite_subnets_are_stitched_from_their_converted_ops(small, tmp_path, monkeypatch):
    """A subnet's TFLite model is assembled from its ops' files: it computes what those
    ops compute in PyTorch, and has the converter's own ops for the whole subnet, in order,
    but for the layout change the pooling op carries when converted alone."""
    from hwnas.backends import tflite
    from hwnas.backends.base import model_key
    from hwnas.convert import to_tflite
    from hwnas.ops import NetworkBuild, build_network, ops

    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    dev = load_device("cpu-tflite")
    arch = small.sample(1, seed=7)[0]
    op_list = ops(arch, small)
    shape = (1, 3, arch.r, arch.r)
    runner, = get_backend(dev, tmp_path).prepare_many(
        [(NetworkBuild(tuple(op_list)), shape, model_key(f"{small.id}:{arch.key}", dev))])
    assert len(list((tmp_path / "cache").rglob("*.tflite"))) == len(
        {o.key for o in op_list}) + 1  # every op's file, and the subnet's
    parts = []
    for op in op_list:
        torch.manual_seed(0)
        parts.append(op.build())
    x = sample_input(shape, seed=4).numpy()
    with torch.no_grad():
        ref = torch.nn.Sequential(*parts).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(runner.infer(x) - ref).max() <= 1e-4
    direct = tflite.interpreter_runner(
        to_tflite(build_network(op_list), sample_input(shape), tmp_path / "direct.tflite"),
        np.zeros(runner.info["input_shape"], np.float32), 1)
    layout = ("TRANSPOSE", "RESHAPE")
    assert [o for o in runner.info["ops"] if o not in layout] == \
        [o for o in direct.info["ops"] if o not in layout]
    assert len(runner.info["ops"]) - len(direct.info["ops"]) <= 2
    assert np.all(runner.time(20) > 0)
    # once timed, the subnet's file goes; its ops' files stay (they make it again)
    backend = get_backend(dev, tmp_path)
    key = model_key(f"{small.id}:{arch.key}", dev)
    freed = backend.discard([key])
    assert freed > 0 and not tflite.ConvertedCache().path(key).exists()
    assert len(list((tmp_path / "cache").rglob("*.tflite"))) == len({o.key for o in op_list})
    assert backend.discard([key]) == 0  # already gone: nothing to free, no error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_litert_gpu_is_reported_unusable_without_a_gpu():
    dev = dataclasses.replace(load_device("cpu-tflite"), hardware="cuda", name="gpu-tflite")
    from hwnas.backends.tflite import TFLiteBackend

    msg = TFLiteBackend.check(dev)
    assert msg is not None and "GPU accelerator is unusable" in msg


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU and a CUDA build of torch (cuda-torch device)")
def test_cuda_torch_backend(small, tmp_path):  # pragma: no cover - GPU machines only
    backend = get_backend(load_device("cuda-torch"), tmp_path)
    op = _op(small)
    runner = backend.prepare(op.build(), op.input_shape, op.key)
    assert np.all(runner.time(10) > 0)


def test_tensorrt_pure_parts():
    from hwnas.backends.tensorrt import (builder_settings, network_flags, parse_errors,
                                         summarize_layer_times)

    dev = load_device("cuda-tensorrt")
    s = builder_settings(dev)
    assert s["precision"] == "fp16" and s["workspace_bytes"] == 1024 << 20
    trt10 = types.SimpleNamespace(__version__="10.3.0")
    assert network_flags(trt10) == 0
    trt8 = types.SimpleNamespace(__version__="8.6.1", NetworkDefinitionCreationFlag=types.
                                 SimpleNamespace(EXPLICIT_BATCH=0))
    assert network_flags(trt8) == 1
    rows = summarize_layer_times({"conv1": [0.2, 0.4, 0.3], "relu": [0.1, 0.1], "empty": []})
    assert [r["layer"] for r in rows] == ["conv1", "relu"]
    assert rows[0]["median_ms"] == pytest.approx(0.3) and rows[0]["calls"] == 3
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    err = types.SimpleNamespace(desc=lambda: "Unsupported ONNX op")
    parser = types.SimpleNamespace(num_errors=2, get_error=lambda i: err)
    assert parse_errors(parser) == "Unsupported ONNX op; Unsupported ONNX op"


def test_tensorrt_engine():
    pytest.importorskip("tensorrt", reason="needs the tensorrt package, an NVIDIA GPU and "
                        "driver (pip install 'hwnas[tensorrt]' on a CUDA machine)")
    if not torch.cuda.is_available():  # pragma: no cover
        pytest.skip("needs a CUDA GPU visible to torch for TensorRT buffers")
    from hwnas.space import SearchSpace  # pragma: no cover

    sp = SearchSpace.small()  # pragma: no cover
    op = _op(sp)  # pragma: no cover
    backend = get_backend(load_device("cuda-tensorrt"))  # pragma: no cover
    runner = backend.prepare(op.build(), op.input_shape, op.key)  # pragma: no cover
    assert np.all(runner.time(10) > 0)  # pragma: no cover
    assert runner.info["layer_times"](5)  # pragma: no cover
