"""The TensorRT backend against a stand-in ``tensorrt`` module: TensorRT reports failure by
return values (None, False), and every one of them must be checked; fp32 must mean fp32;
one logger; a timing cache; an engine cache key that changes with everything an engine
depends on. The real engine path needs TensorRT and an NVIDIA GPU (tests/test_backends.py
and ``python -m benchmarks gpu`` run it there)."""

import types

import pytest

from hwnas.backends import tensorrt as T
from hwnas.errors import BackendError


class FakeTRT:
    """Just enough of TensorRT's Python API; ``fail`` names the step that fails."""

    __version__ = "10.3.0"
    NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    BuilderFlag = types.SimpleNamespace(FP16="fp16", TF32="tf32")
    ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
    TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")

    def __init__(self, fail: str = "") -> None:
        self.fail, self.log, self.loggers = fail, [], 0
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                trt.loggers += 1

        class Config:
            def __init__(self):
                self.flags = {"tf32"}  # TensorRT's default on Ampere and later
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                trt.log.append(("workspace", size))

            def set_flag(self, f):
                self.flags.add(f)

            def clear_flag(self, f):
                self.flags.discard(f)

            def create_timing_cache(self, data):
                trt.log.append(("timing cache in", bytes(data)))
                return types.SimpleNamespace(serialize=lambda: b"timing-" + bytes(data[:3]))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return trt.fail != "timing cache"

            def get_timing_cache(self):
                return self.cache

            def add_optimization_profile(self, profile):
                pass

        class Builder:
            def __init__(self, log):
                self.config = Config()

            def create_network(self, flags):
                return types.SimpleNamespace(get_input=lambda i: types.SimpleNamespace(
                    name="input"))

            def create_builder_config(self):
                return self.config

            def create_optimization_profile(self):
                return types.SimpleNamespace(set_shape=lambda *a: None)

            def build_serialized_network(self, network, config):
                trt.log.append(("flags", sorted(config.flags)))
                return None if trt.fail == "build" else b"ENGINE"

        class Parser:
            num_errors = 1

            def __init__(self, network, log):
                pass

            def parse(self, data):
                return trt.fail != "parse"

            def get_error(self, i):
                return types.SimpleNamespace(desc=lambda: "Unsupported ONNX op")

        class Context:
            def set_input_shape(self, name, shape):
                return trt.fail != "shape"

            def set_tensor_address(self, name, ptr):
                return trt.fail != "address"

            def get_tensor_shape(self, name):
                return (1, 10)

            def execute_async_v3(self, stream):
                return trt.fail != "execute"

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ["input", "output"][i]

            def get_tensor_dtype(self, name):
                return "float32"

            def get_tensor_mode(self, name):
                return "in" if name == "input" else "out"

            def create_execution_context(self):
                return None if trt.fail == "context" else Context()

        class Runtime:
            def __init__(self, log):
                pass

            def deserialize_cuda_engine(self, data):
                return None if trt.fail == "deserialize" else Engine()

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, Parser, \
            Runtime

    @staticmethod
    def nptype(dtype):
        import numpy as np

        return np.float32


SETTINGS = {"precision": "fp32", "workspace_bytes": 1 << 20, "tf32": False}


def buffer(name, shape, dtype, is_input):
    return types.SimpleNamespace(data_ptr=lambda: 1234)


def test_a_build_checks_everything_and_keeps_fp32_fp32():
    trt = FakeTRT()
    engine, cache = T.build_engine_bytes(trt, b"onnx", (1, 3, 32, 32), SETTINGS, b"old")
    assert engine == b"ENGINE" and cache == b"timing-old"  # the timing cache is reused
    assert ("flags", []) in trt.log  # TF32 cleared for fp32
    fp16 = T.build_engine_bytes(trt, b"onnx", (1, 3, 32, 32),
                                {**SETTINGS, "precision": "fp16", "tf32": True})
    assert fp16[0] == b"ENGINE" and ("flags", ["fp16", "tf32"]) in trt.log
    assert trt.loggers == 1  # one logger for every build
    for step, message in [("parse", "could not parse model.onnx: Unsupported ONNX op"),
                          ("build", "failed to build an engine"),
                          ("timing cache", "could not set a timing cache")]:
        with pytest.raises(BackendError, match=message):
            T.build_engine_bytes(FakeTRT(step), b"onnx", (1, 3, 32, 32), SETTINGS)


def test_running_an_engine_checks_every_return_value():
    trt = FakeTRT()
    engine = T.deserialize(trt, b"ENGINE")
    context, buffers, i, o = T.bind(trt, engine, (1, 3, 32, 32), buffer)
    assert (i, o) == ("input", "output") and set(buffers) == {"input", "output"}
    T.execute(context, 0)
    for step, message in [("deserialize", "could not deserialize"),
                          ("context", "could not create an execution context"),
                          ("shape", r"refused input shape \(1, 3, 32, 32\)"),
                          ("address", "refused the buffer of 'input'"),
                          ("execute", "failed to enqueue")]:
        fake = FakeTRT(step)
        with pytest.raises(BackendError, match=message):
            ctx, *_ = T.bind(fake, T.deserialize(fake, b"E"), (1, 3, 32, 32), buffer)
            T.execute(ctx, 0)


def test_the_engine_cache_key_changes_with_what_an_engine_depends_on():
    gpu = {"gpu": "NVIDIA H200", "gpu_capability": "9.0"}
    base = T.engine_cache_key("model", "10.3.0", SETTINGS, gpu, (1, 3, 224, 224))
    variants = [T.engine_cache_key("model", "10.4.0", SETTINGS, gpu, (1, 3, 224, 224)),
                T.engine_cache_key("model", "10.3.0", {**SETTINGS, "precision": "fp16"}, gpu,
                                   (1, 3, 224, 224)),
                T.engine_cache_key("model", "10.3.0", {**SETTINGS, "workspace_bytes": 2},
                                   gpu, (1, 3, 224, 224)),
                T.engine_cache_key("model", "10.3.0", SETTINGS,
                                   {**gpu, "gpu": "NVIDIA L4", "gpu_capability": "8.9"},
                                   (1, 3, 224, 224)),
                T.engine_cache_key("model", "10.3.0", SETTINGS, gpu, (8, 3, 224, 224))]
    assert len({base, *variants}) == 6
    from hwnas.devices import load_device

    assert T.builder_settings(load_device("cuda-tensorrt"))["tf32"] is True  # an fp16 device
    assert T.TensorRTBackend.file_format == "tensorrt"  # it runs exported .engine files
