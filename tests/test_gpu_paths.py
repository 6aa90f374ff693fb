"""GPU paths this machine cannot run, on stand-ins: LiteRT's GPU accelerator must take the
whole model in the device's precision, and "fp32" on CUDA must not mean TF32. The real
runs are ``python -m benchmarks gpu`` on a machine with a GPU (see the README's status)."""

import types

import pytest
import torch

from hwnas.backends.base import tf32
from hwnas.backends.tflite import _gpu_model
from hwnas.errors import BackendError


def fake_litert(fully: bool, fail: bool = False):
    made = {}

    class CompiledModel:
        @staticmethod
        def from_file(path, options=None):
            if fail:
                raise RuntimeError("ERROR: [x.cc:1]\n└ No adapters found")
            made["options"] = options
            return types.SimpleNamespace(is_fully_accelerated=lambda: fully)

    class Options:
        def __init__(self, hardware_accelerators=None, gpu_options=None):
            self.hardware_accelerators, self.gpu_options = hardware_accelerators, gpu_options

    module = types.SimpleNamespace(
        CompiledModel=CompiledModel, Options=Options,
        HardwareAccelerator=types.SimpleNamespace(GPU="gpu"),
        GpuOptions=lambda enforce_f32: types.SimpleNamespace(enforce_f32=enforce_f32))
    return module, made


def test_litert_gpu_takes_the_whole_model_in_the_devices_precision():
    litert, made = fake_litert(fully=True)
    _gpu_model("m.tflite", "fp32", litert)
    assert made["options"].hardware_accelerators == "gpu"
    assert made["options"].gpu_options.enforce_f32 is True  # fp32 means fp32
    _gpu_model("m.tflite", "fp16", litert)
    assert made["options"].gpu_options.enforce_f32 is False
    with pytest.raises(BackendError, match="does not take all of m.tflite.*timed as GPU"):
        _gpu_model("m.tflite", "fp32", fake_litert(fully=False)[0])
    with pytest.raises(BackendError, match=r"unusable here \(ERROR: \[x.cc:1\] └ No adapters"):
        _gpu_model("m.tflite", "fp32", fake_litert(fully=True, fail=True)[0])


def test_fp32_timing_turns_tf32_off_and_restores_it():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with tf32(False):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
